"""Set-up on a fresh machine: the CPU build of torch, a distribution name of our own, a clean
work tree."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import install_torch  # noqa: E402


class _Index(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/whl/cpu/torch/" else 404)
        self.end_headers()
        self.wfile.write(b"<html>torch-2.13.0+cpu</html>")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def cpu_index() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/whl/cpu"
    server.shutdown()
    server.server_close()


def test_torch_comes_from_the_cpu_index_when_it_answers(cpu_index: str) -> None:
    command = install_torch.command(cpu_index, "2.13.0")
    assert command[-3:] == ["--extra-index-url", cpu_index, "torch==2.13.0"]


def test_torch_falls_back_to_the_plain_spec_when_the_index_is_unreachable() -> None:
    with __import__("socket").socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    command = install_torch.command(f"http://127.0.0.1:{port}/whl/cpu", "2.13.0")
    assert command[-1] == "torch==2.13.0" and "--extra-index-url" not in command


def test_the_makefile_and_the_dockerfile_install_torch_the_same_way() -> None:
    makefile = (ROOT / "Makefile").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "tools/install_torch.py" in makefile and "tools/install_torch.py" in dockerfile
    # torch is never installed by a bare spec that would resolve to a CUDA build elsewhere.
    assert not re.search(r"pip install[^\n]*torch==", makefile + dockerfile)


def test_the_distribution_has_a_name_of_its_own() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] != "semcache"  # that name on PyPI is somebody else's project
    assert project["scripts"]["semcache"] == "semcache.cli:main"
    for path in [ROOT / "README.md", *sorted((ROOT / "semcache").rglob("*.py"))]:
        text = path.read_text()
        assert not re.search(r"pip install\s+['\"]?semcache(\[|['\"\s]|$)", text, re.M), path


def test_the_default_cache_directory_is_ignored_by_git() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "semcache-data/entries/cache.db"], cwd=ROOT
    )
    assert ignored.returncode == 0


def test_the_package_list_is_every_package_in_the_tree() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "semcache").rglob("__init__.py")
    }
    assert listed == found | {"semcache.models"}


def test_an_installed_wheel_resolves_the_verifier_as_a_checkout_does(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    check = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import semcache, semcache.config as c, semcache.verification as v; "
        "assert semcache.__file__.startswith(sys.argv[1]), semcache.__file__; "
        "d = c.default_models_dir(); assert str(d).startswith(sys.argv[1]), d; "
        "print(v.resolve_verifier('auto', 'all-MiniLM-L6-v2', d).name)"
    )
    env = {k: v for k, v in os.environ.items() if k != "SEMCACHE_MODELS_DIR"}
    resolved = subprocess.run(
        [sys.executable, "-c", check, str(site)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip
    assert resolved.returncode == 0, resolved.stderr
    assert "multi-mlp-v2" in resolved.stdout
