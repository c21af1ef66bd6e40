"""Install the CPU build of torch, whatever the machine.

    python tools/install_torch.py [--dry-run] [--index URL] [--version 2.13.0]

PyPI's default torch wheel for Linux carries CUDA and pulls several GB of ``nvidia-*``
packages. PyTorch's own CPU wheel index has the CPU build: it is used when it answers within a
few seconds; otherwise (a machine that reaches only PyPI, with a CPU wheel of its own on disk)
the plain ``torch==VERSION`` spec is installed. The Makefile and the Dockerfile both call this,
with the interpreter of the environment to install into (``sys.executable``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import urllib.error
import urllib.request

CPU_INDEX = os.environ.get("TORCH_INDEX", "https://download.pytorch.org/whl/cpu")
VERSION = "2.13.0"


def reachable(index: str, timeout_s: float = 5.0) -> bool:
    """Whether the index answers with a listing for torch."""
    try:
        with urllib.request.urlopen(f"{index.rstrip('/')}/torch/", timeout=timeout_s) as reply:
            return bool(reply.status == 200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def command(index: str, version: str) -> list[str]:
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    if reachable(index):
        # Both indexes are searched; "2.13.0+cpu" sorts above PyPI's "2.13.0", so the CPU build
        # wins and torch's own dependencies still come from the usual index.
        return [*pip, "--extra-index-url", index, f"torch=={version}"]
    return [*pip, f"torch=={version}"]


def main() -> int:
    parser = argparse.ArgumentParser(description="install the CPU build of torch")
    parser.add_argument("--index", default=CPU_INDEX)
    parser.add_argument("--version", default=VERSION)
    parser.add_argument("--dry-run", action="store_true", help="print the pip command only")
    args = parser.parse_args()
    chosen = command(args.index, args.version)
    print(" ".join(chosen), flush=True)
    if args.dry_run:
        return 0
    return subprocess.call(chosen)


if __name__ == "__main__":
    sys.exit(main())
