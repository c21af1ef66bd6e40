"""The sidecar: an OpenAI-compatible HTTP layer over :class:`semcache.SemanticCache`."""

from semcache.server.app import create_app

__all__ = ["create_app"]
