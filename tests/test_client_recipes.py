"""The README's client recipes, run: LangChain's ``ChatOpenAI`` and the LiteLLM SDK pointed at
the sidecar, plain and streaming, with a paraphrase answered from the cache."""

from __future__ import annotations

import os

from tests.sidecar import Sidecar

# LiteLLM reads its price list from the internet at import unless told to use its own copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

QUESTION = "What is the capital of France?"
PARAPHRASE = "What's the capital city of France?"


def completions(sidecar: Sidecar) -> int:
    return len(sidecar.upstream.calls())


async def test_langchain_chat_openai_plain_and_streaming(sidecar: Sidecar) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model="gpt-4o-mini",
        base_url=sidecar.url + "/v1",
        api_key="sk-langchain-user",
        max_retries=0,
        include_response_headers=True,
    )
    first = await llm.ainvoke(QUESTION)
    second = await llm.ainvoke(PARAPHRASE)
    assert first.response_metadata["headers"]["x-semcache"] == "miss"
    assert second.response_metadata["headers"]["x-semcache"] == "hit"
    assert second.content == first.content and completions(sidecar) == 1

    streamed = [chunk async for chunk in llm.astream("Name three primary colours.")]
    again = [chunk async for chunk in llm.astream("Name three primary colours.")]
    text = "".join(str(c.content) for c in streamed)
    assert text and "".join(str(c.content) for c in again) == text
    assert completions(sidecar) == 2  # the second stream was replayed from the cache


async def test_litellm_sdk_plain_and_streaming(sidecar: Sidecar) -> None:
    import litellm

    common = {
        "model": "openai/gpt-4o-mini",
        "api_base": sidecar.url + "/v1",
        "api_key": "sk-litellm-user",
        "num_retries": 0,
    }
    first = await litellm.acompletion(messages=[{"role": "user", "content": QUESTION}], **common)
    second = await litellm.acompletion(messages=[{"role": "user", "content": PARAPHRASE}], **common)
    # LiteLLM hands on the provider's headers with a prefix of its own.
    headers = second._hidden_params["additional_headers"]
    assert first._hidden_params["additional_headers"]["llm_provider-x-semcache"] == "miss"
    assert headers["llm_provider-x-semcache"] == "hit"
    assert second.choices[0].message.content == first.choices[0].message.content
    assert completions(sidecar) == 1

    async def stream() -> str:
        response = await litellm.acompletion(
            messages=[{"role": "user", "content": "Name three primary colours."}],
            stream=True,
            **common,
        )
        return "".join([chunk.choices[0].delta.content or "" async for chunk in response])

    text = await stream()
    assert text and await stream() == text
    assert completions(sidecar) == 2
