"""Azure OpenAI's own clients pointed at the sidecar (``azure_endpoint``): the deployment paths
(``/openai/deployments/{deployment}/...?api-version=...``, key in ``api-key``) and the v1 API
(``/openai/v1/...``) are served like ``/v1/...``, cached and isolated per key, against a fake
upstream on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai

from semcache.upstream.specs import model_of_deployment, parse_upstreams
from tests.conftest import WordHashEmbedder
from tests.fake_openai import FakeOpenAI
from tests.sidecar import Sidecar, start_sidecar

API_VERSION = "2024-10-21"
QUESTION = [{"role": "user", "content": "what is the boiling point of water at sea level"}]


def azure_upstream(fake: FakeOpenAI) -> dict[str, Any]:
    return azure_upstream_at(fake.url.removesuffix("/v1"))


def azure_upstream_at(base_url: str) -> dict[str, Any]:
    return {
        "name": "azure-east",
        "kind": "azure",
        "base_url": base_url,
        "api_keys": ["azure-secret"],
        "api_version": API_VERSION,
        "deployments": {"gpt-4o-mini": "mini-prod"},
    }


def azure_sidecar(tmp_path: Path, upstream: FakeOpenAI) -> Any:
    """A sidecar whose upstream is the fake as an Azure OpenAI resource."""
    specs = parse_upstreams([azure_upstream(upstream)], {})
    return start_sidecar(tmp_path, WordHashEmbedder(), upstream, upstreams=specs)


def azure_client(sidecar: Sidecar, key: str = "tenant-key-one") -> openai.AsyncAzureOpenAI:
    return openai.AsyncAzureOpenAI(
        azure_endpoint=sidecar.url, api_key=key, api_version=API_VERSION, max_retries=0
    )


async def test_the_azure_client_is_answered_cached_and_shares_the_cache_with_v1(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    async with azure_sidecar(tmp_path, upstream) as sidecar:
        client = azure_client(sidecar)
        # The Azure client writes the deployment in the path and in the body's "model".
        first = await client.chat.completions.with_raw_response.create(
            model="mini-prod", messages=QUESTION
        )
        again = await client.chat.completions.with_raw_response.create(
            model="mini-prod", messages=QUESTION
        )
        # The same key through the OpenAI client, naming the model the deployment serves.
        plain = openai.AsyncOpenAI(
            base_url=sidecar.url + "/v1", api_key="tenant-key-one", max_retries=0
        )
        same = await plain.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=QUESTION
        )
        other_key = await azure_client(
            sidecar, "tenant-key-two"
        ).chat.completions.with_raw_response.create(model="mini-prod", messages=QUESTION)
        await client.close()
        await plain.close()
    assert first.headers["X-Semcache"] == "miss"
    assert first.parse().choices[0].message.content
    assert again.headers["X-Semcache"] == "hit"
    assert same.headers["X-Semcache"] == "hit"
    assert other_key.headers["X-Semcache"] == "miss"  # another key, another tenant
    assert [r.path for r in upstream.received] == [
        "/openai/deployments/mini-prod/chat/completions"
    ] * 2
    assert all(r.headers["api-key"] == "azure-secret" for r in upstream.received)
    assert all(r.body["model"] == "gpt-4o-mini" for r in upstream.received)


async def test_embeddings_and_the_v1_api_reach_the_upstream(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    async with azure_sidecar(tmp_path, upstream) as sidecar:
        client = azure_client(sidecar)
        embedded = await client.embeddings.create(model="mini-prod", input="hello")
        await client.close()
        # Azure's v1 API: the OpenAI client at {endpoint}/openai/v1/, the model in the body.
        v1 = openai.AsyncOpenAI(
            base_url=sidecar.url + "/openai/v1/", api_key="tenant-key-one", max_retries=0
        )
        first = await v1.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=QUESTION
        )
        again = await v1.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=QUESTION
        )
        await v1.close()
    assert embedded.data[0].embedding == [0.1, 0.2]
    assert first.headers["X-Semcache"] == "miss" and again.headers["X-Semcache"] == "hit"
    assert [r.path for r in upstream.received] == [
        "/openai/deployments/mini-prod/embeddings",
        "/openai/deployments/mini-prod/chat/completions",
    ]


async def test_a_deployment_path_cannot_reach_outside_v1(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    async with start_sidecar(tmp_path, WordHashEmbedder(), upstream) as sidecar:
        status, body, _ = await sidecar.post(
            "/openai/deployments/x/..%2F..%2Fadmin?api-version=1", b"{}"
        )
    assert status == 400 and body["error"]["param"] == "path"
    assert upstream.received == []


def test_a_deployment_names_the_model_it_serves_else_itself() -> None:
    fake_url = "http://127.0.0.1:9"
    specs = parse_upstreams(
        [azure_upstream_at(fake_url), {"name": "plain", "base_url": fake_url + "/v1"}], {}
    )
    assert model_of_deployment(specs, "mini-prod") == "gpt-4o-mini"
    assert model_of_deployment(specs, "gpt-4o") == "gpt-4o"
