"""Settings from flags, environment and file; the CLI starting the real server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from semcache.errors import ConfigError
from semcache.settings import load_config, markdown_table, settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, (
        "README's settings table is stale: python -m semcache.settings"
    )


def test_precedence_is_flags_then_environment_then_file(tmp_path: Path) -> None:
    config_file = tmp_path / "semcache.toml"
    config_file.write_text(
        'port = 9000\nmin_similarity = 0.9\nttl_s = 60\nupstream = "http://file/v1"\n'
    )
    env = {"SEMCACHE_PORT": "9100", "SEMCACHE_MIN_SIMILARITY": "0.95"}
    config = load_config({"port": "9200"}, environ=env, config_file=config_file)
    assert config.port == 9200
    assert config.min_similarity == 0.95
    assert config.ttl_s == 60.0
    assert config.upstream == "http://file/v1"
    assert load_config({}, environ={"SEMCACHE_TTL_S": "none"}).ttl_s is None


@pytest.mark.parametrize(
    ("cli", "environ", "message"),
    [
        ({"port": "http"}, {}, "port (from --port) must be a int"),
        ({}, {"SEMCACHE_MIN_SIMILARITY": "1.5"}, "min_similarity must be a number in (0, 1]"),
        (
            {},
            {"SEMCACHE_UPSTREAM": "api.openai.com"},
            "upstream must be an http:// or https:// URL",
        ),
        ({"max_entries": "0"}, {}, "max_entries must be a positive integer"),
        ({"log_level": "loud"}, {}, "log_level must be debug, info, warning or error"),
        ({"upstream_timeout_s": "-1"}, {}, "upstream_timeout_s must be a positive number"),
    ],
)
def test_bad_settings_say_what_to_fix(
    cli: dict[str, str], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(cli, environ=environ)
    assert message in str(info.value)


def test_a_bad_config_file_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("port = = 1")
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config({}, environ={}, config_file=broken)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("prot = 1")
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        load_config({}, environ={}, config_file=unknown)


def test_every_setting_has_a_flag_and_help() -> None:
    for info in settings():
        assert info.help and info.flag.startswith("--") and info.env.startswith("SEMCACHE_")


def test_the_cli_refuses_a_bad_setting_at_start() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "semcache", "serve", "--min-similarity", "3"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert "min_similarity must be a number in (0, 1]" in result.stderr


def test_semcache_serve_starts_the_sidecar(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "SEMCACHE_CACHE_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    with subprocess.Popen(
        [sys.executable, "-m", "semcache", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    ) as server:  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                        assert r.status == 200
                        break
                except OSError:
                    assert server.poll() is None, server.stderr.read() if server.stderr else ""
                    assert time.monotonic() < deadline, "the sidecar did not start"
                    time.sleep(0.3)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as r:
                assert json.loads(r.read())["cache"]["entries"] == 0
        finally:
            server.terminate()
            server.wait(timeout=30)
    assert (tmp_path / "data").is_dir()


def test_every_cache_option_is_a_sidecar_setting() -> None:
    import dataclasses

    from semcache.config import CacheConfig

    options = {f.name for f in dataclasses.fields(CacheConfig)}
    assert options <= {info.name for info in settings()}
    config = load_config(
        {"top_k": "4"},
        environ={"SEMCACHE_GUARDS": "false", "SEMCACHE_VERIFY_TOP": "2", "SEMCACHE_WORKERS": "3"},
    )
    cache = config.cache_config()
    assert (cache.top_k, cache.guards, cache.verify_top, cache.workers) == (4, False, 2, 3)


def test_renamed_settings_are_still_read_under_their_old_names(tmp_path: Path) -> None:
    path = tmp_path / "semcache.toml"
    path.write_text("batch_max_size = 7\n")
    config = load_config(environ={"SEMCACHE_BATCH_MAX_WAIT_MS": "9"}, config_file=path)
    assert (config.lookup_batch_size, config.lookup_batch_wait_ms) == (7, 9.0)
