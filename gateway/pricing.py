"""What a response cost, computed the way Anthropic bills it and Claude Code shows it.

Prices come in layers, first match wins: the operator's GATEWAY_PRICING_FILE, then the gateway's own gap table
(`gateway/data/pricing.json`: only what the library below lacks), then `genai-prices`, a maintained price
database that ships its data in the package (it is never asked to update itself over the network). A model in
none of them is charged at the highest list price of its family, so a new model can never make a budget
inapplicable; its audit rows say so.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from gateway.metering import Usage

logger = logging.getLogger(__name__)


# How a row's cost was found: the model's own list price, or the fallback rule for a model with none.
RULE_LIST = "list"
RULE_FAMILY_MAX = "family_max"
RULE_OVERALL_MAX = "overall_max"

# Anthropic's published multipliers, used where an operator's file leaves a price out.
US_INFERENCE_PREMIUM = Decimal("1.1")
DEFAULT_WEB_SEARCH = Decimal("0.01")  # USD per search request, where a source names none

_MILLION = Decimal(1_000_000)
_DATE_SUFFIX = re.compile(r"-\d{8}$")
# claude-opus-5-5, claude-3-5-haiku, claude-3-opus: the family is the first all-letter part after the version.
_FAMILY = re.compile(r"^claude-(?:\d+(?:-\d+)?-)?([a-z]+)")
# Model strings can come from clients; past this many distinct ones the lookup cache starts over.
_CACHE_LIMIT = 1024


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per million tokens, for one price tier of one model."""

    input: Decimal
    output: Decimal
    cache_write: Decimal  # a 5-minute cache write
    cache_write_1h: Decimal
    cache_read: Decimal


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Everything that prices one model: its rates, a long-prompt tier, fast mode, server-tool fees."""

    model: str
    rates: Rates
    source: str
    web_search: Decimal = DEFAULT_WEB_SEARCH  # USD per search request
    long_prompt: Rates | None = None
    long_prompt_above: int = 0  # the long-prompt rates apply when input + cache read + cache write exceed this
    fast: Rates | None = None

    def cost(self, usage: Usage) -> Decimal:
        """USD for one response, as Claude Code computes it: cache writes split by TTL, the long-prompt tier chosen
        per sampling iteration, x1.1 for US-only inference, and web searches at a flat fee."""
        if usage.speed == "fast" and self.fast is not None:
            tokens = _tokens_cost(self.fast, usage)
        else:
            tokens = sum((_tokens_cost(self._tier(part), part) for part in _iterations(usage)), Decimal(0))
        if usage.inference_geo == "us":
            tokens *= US_INFERENCE_PREMIUM
        return tokens + (usage.web_search_requests or 0) * self.web_search

    @property
    def headline(self) -> tuple[Decimal, Decimal]:
        """(output, input) list rates: what "the highest price" of a family compares."""
        return (self.rates.output, self.rates.input)

    def _tier(self, usage: Usage) -> Rates:
        if self.long_prompt is not None:
            prompt = (usage.input_tokens or 0) + (usage.cache_read_input_tokens or 0)
            if prompt + (usage.cache_creation_input_tokens or 0) > self.long_prompt_above:
                return self.long_prompt
        return self.rates


def _tokens_cost(rates: Rates, usage: Usage) -> Decimal:
    written = usage.cache_creation_input_tokens or 0
    one_hour = min(max(usage.cache_creation_1h_input_tokens or 0, 0), written)
    total = (
        (usage.input_tokens or 0) * rates.input
        + (usage.output_tokens or 0) * rates.output
        + (usage.cache_read_input_tokens or 0) * rates.cache_read
        + one_hour * rates.cache_write_1h
        + (written - one_hour) * rates.cache_write
    )
    return total / _MILLION


_COUNTS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def _iterations(usage: Usage) -> list[Usage]:
    """The parts priced one by one: the sampling iterations the usage lists when their counts add up to the
    totals (each may fall in a different long-prompt tier), else the whole response."""
    raw = [item for item in usage.iterations or () if isinstance(item, dict) and item.get("type") == "message"]
    if not raw:
        return [usage]
    for name in _COUNTS:
        values = [item.get(name, 0) for item in raw]
        if not all(type(v) is int and v >= 0 for v in values) or sum(values) != (getattr(usage, name) or 0):
            return [usage]
    # One-hour cache writes the totals report but no iteration claims go to the earliest iterations with room.
    spare = max(0, (usage.cache_creation_1h_input_tokens or 0) - sum(_one_hour(item) for item in raw))
    parts = []
    for item in raw:
        written = item.get("cache_creation_input_tokens", 0)
        one_hour = _one_hour(item)
        five_minute = min(max(_split(item, "ephemeral_5m_input_tokens"), 0), written - one_hour)
        extra = min(spare, written - five_minute - one_hour)
        spare -= extra
        parts.append(
            Usage(
                input_tokens=item.get("input_tokens", 0),
                output_tokens=item.get("output_tokens", 0),
                cache_read_input_tokens=item.get("cache_read_input_tokens", 0),
                cache_creation_input_tokens=written,
                cache_creation_1h_input_tokens=one_hour + extra,
            )
        )
    return parts


def _split(item: dict[str, Any], name: str) -> int:
    creation = item.get("cache_creation")
    value = creation.get(name) if isinstance(creation, dict) else None
    return value if type(value) is int else 0


def _one_hour(item: dict[str, Any]) -> int:
    written: int = item.get("cache_creation_input_tokens", 0)
    return min(max(_split(item, "ephemeral_1h_input_tokens"), 0), written)


@dataclass(frozen=True, slots=True)
class Priced:
    """A response's cost and how it was found, for the audit row."""

    cost_usd: float
    priced_as: str
    rule: str
    source: str


def family(model: str) -> str | None:
    """`opus` for claude-opus-5-5 and claude-3-opus; None for a string that is not a Claude model id."""
    match = _FAMILY.match(model)
    return match.group(1) if match else None


def canonical(model: str) -> str:
    """A model string as upstreams report it, reduced to the id prices are kept under."""
    candidate = model.strip().lower()
    # Vertex AI: `publishers/anthropic/models/claude-sonnet-4-5@20250929`; the version follows the `@`.
    candidate = candidate.rpartition("/")[2].partition("@")[0]
    # Anthropic: dated snapshots `claude-sonnet-4-5-20250929`, `-latest` aliases, Claude Code's `[1m]` suffix.
    return _DATE_SUFFIX.sub("", candidate.removesuffix("[1m]").removesuffix("-latest"))


class PriceLibrary(Protocol):
    """A price database consulted after the table's layers (genai-prices: gateway.price_sources)."""

    source: str

    def find(self, model: str) -> ModelPrice | None: ...

    def all_models(self) -> list[ModelPrice]: ...


class PriceTable:
    """Model prices in layers (operator file, gap table, genai-prices), with lookups cached."""

    def __init__(self, layers: list[dict[str, ModelPrice]], library: PriceLibrary | None = None) -> None:
        self._layers = layers
        self._library = library
        self.sources = [*dict.fromkeys(p.source for layer in layers for p in layer.values())]
        if library is not None:
            self.sources.append(library.source)
        known = [p for layer in layers for p in layer.values()] + (library.all_models() if library else [])
        if not known:
            raise ValueError("no model has a price")
        self._family_max: dict[str, ModelPrice] = {}
        for price in known:
            name = family(price.model)
            if name and (name not in self._family_max or price.headline > self._family_max[name].headline):
                self._family_max[name] = price
        self._overall_max = max(known, key=lambda price: price.headline)
        self._cache: dict[str | None, tuple[ModelPrice, str]] = {}
        self._warned: set[str] = set()
        self.fallback_requests = 0

    def price_for(self, model: str | None) -> tuple[ModelPrice, str]:
        """The prices that apply to a model string and the rule that chose them (`list` or a fallback)."""
        try:
            return self._cache[model]
        except KeyError:
            pass
        found = self._find(model)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[model] = found
        return found

    def cost(self, model: str | None, usage: Usage) -> Priced:
        """USD for one response, never None: an unknown model is charged by the fallback rule, and logged once."""
        price, rule = self.price_for(model)
        if rule != RULE_LIST:
            self.fallback_requests += 1
            key = model or ""
            if key not in self._warned and len(self._warned) < _CACHE_LIMIT:
                self._warned.add(key)
                logger.warning(
                    "pricing: no price for model %r; charging %s's list price (%s) until a price is known",
                    key[:100],
                    price.model,
                    rule,
                )
        return Priced(float(price.cost(usage)), price.model, rule, price.source)

    def most_micros(self, model: str | None, input_tokens: int, output_tokens: int) -> int:
        """The most a request with this input and output can cost, in micro-dollars, at its model's list rates
        (the long-prompt tier where it applies), for holding against budgets while it runs."""
        price, _ = self.price_for(model)
        rates = price.rates
        if price.long_prompt is not None and input_tokens > price.long_prompt_above:
            rates = price.long_prompt
        # USD per million tokens times tokens is micro-dollars.
        return int(input_tokens * rates.input + output_tokens * rates.output + 1)

    def prometheus_text(self) -> str:
        """The fallback counter for `GET /metrics` (model names stay in the log: clients choose them)."""
        metric = "gateway_price_fallback_requests_total"
        return (
            f"# HELP {metric} Responses charged by the fallback rule because their model had no known price.\n"
            f"# TYPE {metric} counter\n{metric} {self.fallback_requests}\n"
        )

    def _find(self, model: str | None) -> tuple[ModelPrice, str]:
        if model:
            for candidate in dict.fromkeys((model.strip().lower(), canonical(model))):
                for layer in self._layers:
                    if candidate in layer:
                        return layer[candidate], RULE_LIST
                found = self._library.find(candidate) if self._library else None
                if found is not None:
                    return found, RULE_LIST
            name = family(canonical(model))
            if name in self._family_max:
                return self._family_max[name], RULE_FAMILY_MAX
        return self._overall_max, RULE_OVERALL_MAX
