# Sourced by tools/build_image.sh and the container test: what podman and buildah need on this
# kind of host to run a container (a build's RUN steps, or the image), in the array run_args.
#   - the host's network (the build fetches from PyPI; the test's fake upstream is on loopback);
#   - resource limits no higher than this process's: the engines' defaults (nofile 1048576,
#     nproc 32768) need CAP_SYS_RESOURCE, which a container host may not give;
#   - runc where the host mounts cgroups v1 beside a v2 hierarchy ("hybrid"), which crun refuses.
run_args=(--network host
          --ulimit "nofile=$(ulimit -n):$(ulimit -Hn)"
          --ulimit "nproc=4096:4096")
if [ -d /sys/fs/cgroup/unified ] && command -v runc >/dev/null; then
  run_args+=(--runtime "$(command -v runc)")
fi
