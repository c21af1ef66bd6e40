"""Talking to the LLM API behind the sidecar."""

from semcache.upstream.client import Upstream, forwardable_headers

__all__ = ["Upstream", "forwardable_headers"]
