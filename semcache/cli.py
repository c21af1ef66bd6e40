"""The ``semcache`` command: ``serve`` (the default) runs the sidecar."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from semcache.errors import SemcacheError
from semcache.settings import load_config, settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semcache", description="A semantic cache for OpenAI-style LLM APIs."
    )
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser(
        "serve",
        help="run the OpenAI-compatible sidecar (the default command)",
        description="Run the sidecar. Every flag can also be set as SEMCACHE_<NAME> in the "
        "environment or in the --config TOML file; flags win over the environment, which wins "
        "over the file.",
    )
    serve.add_argument("--config", type=Path, help="TOML file of settings")
    bench = commands.add_parser(
        "bench",
        help="measure hit rate, precision and savings on a JSONL file",
        description="Measure semcache on labelled pairs (pair mode: sweeps min_confidence with "
        "a verifier, min_similarity without) or on a replayed stream of requests through the "
        "sidecar (stream mode); write results.json and plots to --out.",
    )
    models = commands.add_parser(
        "models",
        help="prepare the embedding model: 'semcache models export' writes its ONNX graph",
        description="Export the embedding model to ONNX from its local weights (no download), "
        "into <models_dir>/onnx/<model>/, so the first lookup need not. make install and the "
        "Dockerfile run it.",
    )
    models.add_argument("action", choices=["export"])
    models.add_argument("--model", default=None, help="model name or folder (default: MiniLM)")
    models.add_argument("--models-dir", type=Path, default=None, help="default: models/")
    from semcache.bench.options import add_arguments

    add_arguments(bench)
    for info in settings():
        default = "none" if info.default is None else info.default
        serve.add_argument(
            info.flag,
            dest=info.name,
            default=None,
            metavar=info.value_type.__name__.upper(),
            help=f"{info.help} (default {default}; env {info.env})",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help")):
        args_list.insert(0, "serve")
    args = _parser().parse_args(args_list)
    if args.command == "serve":
        return _serve(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "models":
        return _export_model(args)
    _parser().print_help()
    return 2


def _bench(args: argparse.Namespace) -> int:
    try:
        from semcache.bench.options import BenchOptions
        from semcache.bench.runner import run_bench

        options = BenchOptions(**{k: v for k, v in vars(args).items() if k != "command"})
        run_bench(options)
    except ImportError as exc:
        print(
            f"semcache bench needs its extra: pip install -e '.[bench]' ({exc})",
            file=sys.stderr,
        )
        return 2
    except SemcacheError as exc:
        print(f"semcache bench: {exc}", file=sys.stderr)
        return 2
    return 0


def _export_model(args: argparse.Namespace) -> int:
    from semcache.config import default_models_dir
    from semcache.embedding import resolve_model
    from semcache.onnx_embedding import export, export_dir, is_exported

    try:
        name, source = resolve_model(args.model, args.models_dir)
        target = export_dir(name, args.models_dir or default_models_dir())
        if is_exported(source, target):
            print(f"{target}: up to date with {source}")
            return 0
        export(source, target)
    except SemcacheError as exc:
        print(f"semcache models export: {exc}", file=sys.stderr)
        return 1
    print(f"{target}: exported from {source}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    cli = {info.name: getattr(args, info.name) for info in settings()}
    try:
        config = load_config(cli, config_file=args.config)
    except SemcacheError as exc:
        print(f"semcache: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The port and the cache directory first, each a one-line error: nobody should wait for the
    # model to load to learn that the port is taken or the disk is read-only.
    try:
        sock = _listen(config.host, config.port)
    except OSError as exc:
        print(
            f"semcache: cannot listen on {config.host}:{config.port}: {exc.strerror or exc} "
            f"(choose another with --port)",
            file=sys.stderr,
        )
        return 1
    from aiohttp import web

    from semcache.cache import SemanticCache
    from semcache.server import create_app

    try:
        cache = SemanticCache(
            config.cache_dir, config=config.cache_config(), redis=config.redis_link()
        )
    except SemcacheError as exc:
        sock.close()
        print(f"semcache: {exc}", file=sys.stderr)
        return 1
    try:
        web.run_app(
            create_app(config, cache=cache),
            sock=sock,
            print=lambda _: logging.getLogger("semcache").info(
                "semcache sidecar on http://%s:%d/v1 -> %s (cache in %s)",
                config.host,
                config.port,
                config.upstream,
                config.cache_dir,
            ),
        )
    except SemcacheError as exc:
        print(f"semcache: {exc}", file=sys.stderr)
        return 1
    finally:
        cache.close()
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, as aiohttp would open it.

    Raises:
        OSError: the address is taken or cannot be used.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


if __name__ == "__main__":
    sys.exit(main())
