"""Azure OpenAI's paths, as its clients write them when pointed at the sidecar
(``AzureOpenAI(azure_endpoint=...)``).

- The deployment paths, ``/openai/deployments/{deployment}/chat/completions?api-version=...``:
  the model is the deployment, named in the path (:func:`with_model_in_path`).
- The v1 API, ``/openai/v1/chat/completions``: the model in the body, as at ``/v1``.

Both stand for the ``/v1`` path of the same API (:func:`v1_path`). The client's
``api-version`` is not passed on (:func:`forwarded_query`): an azure upstream gets its own
(``[[upstreams]] api_version``), and the others take none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import web

from semcache.upstream.specs import UpstreamSpec, model_of_deployment

PREFIX = "/openai"
DEPLOYMENT = PREFIX + "/deployments/{deployment}"


def with_model_in_path(request: web.Request, upstreams: Sequence[UpstreamSpec], body: Any) -> Any:
    """``body`` (parsed JSON) with the model a deployment path names (see
    :func:`model_of_deployment`) as its ``"model"``: Azure reads the path, and its clients
    write the deployment's name in the body, if anything. Any other path or body: as it is."""
    deployment = request.match_info.get("deployment")
    if deployment is None or not isinstance(body, dict):
        return body
    return {**body, "model": model_of_deployment(upstreams, deployment)}


def v1_path(request: web.Request) -> str:
    """The ``/v1`` path a request stands for, percent-encoded as it came (the router checks
    that it stays under ``/v1/``)."""
    raw = request.rel_url.raw_path
    if "deployment" in request.match_info:  # /openai/deployments/{deployment}/{rest}
        return "/v1/" + raw.split("/", 4)[4]
    return raw.removeprefix(PREFIX) if raw.startswith(PREFIX + "/") else raw


def forwarded_query(request: web.Request) -> str:
    """The query string to pass on: the client's, less an Azure client's ``api-version``."""
    raw = request.rel_url.raw_query_string
    if not request.rel_url.raw_path.startswith(PREFIX + "/") or "api-version" not in raw:
        return raw
    kept = [(k, v) for k, v in parse_qsl(raw, keep_blank_values=True) if k != "api-version"]
    return urlencode(kept)
