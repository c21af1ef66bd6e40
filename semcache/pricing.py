"""Prices per 1,000 tokens, to turn tokens served from the cache into money saved.

The built-in table holds OpenAI list prices in USD as published when it was written; they
change, so a deployment should set its own in the config file::

    [prices."gpt-4o"]
    input_per_1k = 0.0025
    output_per_1k = 0.01
    cached_input_per_1k = 0.00125   # prompt tokens read from the provider's cache

A model is matched by exact name, then by the longest listed name it starts with (so
``gpt-4o-2024-08-06`` is priced as ``gpt-4o``). An unknown model is priced at zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from semcache.errors import ConfigError


@dataclass(frozen=True)
class Price:
    input_per_1k: float
    output_per_1k: float
    cached_input_per_1k: float | None = None  # prompt tokens from the provider's cache

    @property
    def cached_per_1k(self) -> float:
        return self.input_per_1k if self.cached_input_per_1k is None else self.cached_input_per_1k


DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o": Price(0.0025, 0.01, 0.00125),
    "gpt-4o-mini": Price(0.00015, 0.0006, 0.000075),
    "gpt-4.1": Price(0.002, 0.008, 0.0005),
    "gpt-4.1-mini": Price(0.0004, 0.0016, 0.0001),
    "gpt-4.1-nano": Price(0.0001, 0.0004, 0.000025),
    "gpt-4-turbo": Price(0.01, 0.03),
    "gpt-4": Price(0.03, 0.06),
    "gpt-3.5-turbo": Price(0.0005, 0.0015),
    "o1": Price(0.015, 0.06, 0.0075),
    "o3-mini": Price(0.0011, 0.0044, 0.00055),
    # Anthropic reads its prompt cache at a tenth of the input price (writes cost 1.25x).
    "claude-3-5-haiku": Price(0.0008, 0.004, 0.00008),
    "claude-3-5-sonnet": Price(0.003, 0.015, 0.0003),
    "claude-3-7-sonnet": Price(0.003, 0.015, 0.0003),
    "claude-sonnet-4": Price(0.003, 0.015, 0.0003),
    "claude-opus-4": Price(0.015, 0.075, 0.0015),
    "text-embedding-3-small": Price(0.00002, 0.0),
    "text-embedding-3-large": Price(0.00013, 0.0),
    "text-embedding-ada-002": Price(0.0001, 0.0),
}


class PriceTable:
    def __init__(self, prices: Mapping[str, Price] | None = None) -> None:
        self._prices = dict(DEFAULT_PRICES if prices is None else prices)

    @classmethod
    def from_config(cls, section: Mapping[str, object]) -> PriceTable:
        """The defaults overlaid with a ``[prices]`` table.

        Raises:
            ConfigError: an entry lacks a numeric ``input_per_1k`` or ``output_per_1k``.
        """
        prices = dict(DEFAULT_PRICES)
        for model, entry in section.items():
            try:
                assert isinstance(entry, Mapping)
                values = [float(entry[k]) for k in ("input_per_1k", "output_per_1k")]
                cached = entry.get("cached_input_per_1k")
                if cached is not None:
                    values.append(float(cached))
                if min(values) < 0:
                    raise ValueError
            except (AssertionError, KeyError, TypeError, ValueError):
                raise ConfigError(
                    f"prices.{model} needs non-negative numbers input_per_1k and output_per_1k "
                    "(and optionally cached_input_per_1k)"
                ) from None
            prices[model] = Price(*values)
        return cls(prices)

    def price(self, model: str) -> Price:
        if model in self._prices:
            return self._prices[model]
        matches = [name for name in self._prices if model.startswith(name)]
        return self._prices[max(matches, key=len)] if matches else Price(0.0, 0.0)

    def cost(
        self, model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0
    ) -> float:
        """The bill of an answer; ``cached_tokens`` of the prompt were read from the provider's
        prompt cache, at its discount."""
        price = self.price(model)
        cached = min(max(cached_tokens, 0), prompt_tokens)
        return (
            (prompt_tokens - cached) * price.input_per_1k
            + cached * price.cached_per_1k
            + completion_tokens * price.output_per_1k
        ) / 1000
