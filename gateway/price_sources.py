"""Where prices come from: the operator's GATEWAY_PRICING_FILE and the packaged gap table (one JSON format, parsed
and checked here), and genai-prices' Anthropic data read into the same shape; `load_prices` layers them into
the gateway's PriceTable."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from importlib import metadata, resources
from typing import Any

from gateway.pricing import DEFAULT_WEB_SEARCH, ModelPrice, PriceTable, Rates

UNIT = "USD per million tokens"
PACKAGED = "gateway/data/pricing.json (packaged gap table)"
# Anthropic's one-hour cache write costs twice the input price, where a source names no price of its own.
ONE_HOUR_WRITE_PER_INPUT = Decimal(2)

_RATE_FIELDS = ("input", "output", "cache_write", "cache_write_1h", "cache_read")
_REQUIRED_FIELDS = ("input", "output", "cache_write", "cache_read")
_MODEL_KEYS = frozenset((*_RATE_FIELDS, "web_search", "long_prompt", "fast", "aliases"))
_TIER_KEYS = frozenset((*_RATE_FIELDS, "above_prompt_tokens"))


def load_prices(path: str | None = None) -> PriceTable:
    """The operator's file (if any) over the packaged gap table over genai-prices; a bad file raises ValueError
    naming the file and the field."""
    layers = [read_price_file(path)] if path is not None else []
    layers.append(read_price_file(None))
    return PriceTable(layers, GenaiPrices())


class GenaiPrices:
    """genai-prices' Anthropic data, read into our price shape."""

    def __init__(self) -> None:
        from genai_prices import data

        self.source = f"genai-prices {metadata.version('genai-prices')}"
        self._provider = next(provider for provider in data.providers if provider.id == "anthropic")
        self._now = datetime.now(UTC)
        self._cache: dict[str, ModelPrice | None] = {}

    def find(self, model: str) -> ModelPrice | None:
        if model not in self._cache:
            found = self._provider.find_model(model)
            self._cache[model] = None if found is None else self._convert(found)
        return self._cache[model]

    def all_models(self) -> list[ModelPrice]:
        return [price for model in self._provider.models if (price := self._convert(model)) is not None]

    def _convert(self, model: Any) -> ModelPrice | None:
        from genai_prices.types import TieredPrices

        prices = model.get_prices(self._now)
        fields = (prices.input_mtok, prices.output_mtok, prices.cache_write_mtok, prices.cache_read_mtok)
        if any(value is None for value in fields):
            return None

        def base(value: Any) -> Decimal:
            return Decimal(value.base if isinstance(value, TieredPrices) else value)

        def tier(value: Any) -> tuple[int, Decimal] | None:
            return (value.tiers[0].start, Decimal(value.tiers[0].price)) if isinstance(value, TieredPrices) else None

        names = ("input_mtok", "output_mtok", "cache_write_mtok", "cache_write_1h_mtok", "cache_read_mtok")
        values = [getattr(prices, name) for name in names]
        if values[3] is None:
            values[3] = base(values[0]) * ONE_HOUR_WRITE_PER_INPUT
        rates = Rates(*(base(value) for value in values))
        long_prompt, above = None, 0
        tiers = [tier(value) for value in values]
        if all(t is not None for t in tiers):
            above = tiers[0][0]  # type: ignore[index]
            long_prompt = Rates(*(t[1] for t in tiers))  # type: ignore[index]
        fast = None
        for variant in model.price_variants or ():
            active = variant.constraint is None or variant.constraint.active(self._now)
            if variant.when == {"speed": "fast"} and active:
                fast = Rates(*(base(getattr(variant.prices, name)) for name in names))
        web = prices.web_searches_kcount
        return ModelPrice(
            model=model.id,
            rates=rates,
            source=self.source,
            web_search=DEFAULT_WEB_SEARCH if web is None else Decimal(web) / 1000,
            long_prompt=long_prompt,
            long_prompt_above=above,
            fast=fast,
        )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a price")


def read_price_file(path: str | None) -> dict[str, ModelPrice]:
    """A price file (GATEWAY_PRICING_FILE's form), or the packaged gap table, by lower-cased model id and alias."""
    name = PACKAGED if path is None else path
    try:
        if path is None:
            text = resources.files("gateway").joinpath("data").joinpath("pricing.json").read_text("utf-8")
        else:
            with open(path, encoding="utf-8") as file:
                text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"pricing file {name}: cannot be read: {exc}") from exc
    try:
        data = json.loads(text, parse_float=Decimal, parse_int=Decimal, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ValueError(f"pricing file {name}: not valid JSON: {exc}") from exc
    try:
        return _from_data(data, "packaged gap table" if path is None else f"pricing file {path}")
    except ValueError as exc:
        raise ValueError(f"pricing file {name}: {exc}") from exc


def _from_data(data: object, origin: str) -> dict[str, ModelPrice]:
    if not isinstance(data, dict):
        raise ValueError("the top level must be a JSON object")
    if data.get("unit") != UNIT:
        raise ValueError(f'"unit" must be "{UNIT}", got {data.get("unit")!r}')
    if data.get("currency", "USD") != "USD":
        raise ValueError(f'"currency" must be "USD", got {data.get("currency")!r}')
    as_of = data.get("as_of", "")
    if not isinstance(data.get("source", ""), str) or not isinstance(as_of, str):
        raise ValueError('"source" and "as_of" must be strings')
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise ValueError('"models" must be a non-empty object of model id to prices')
    source = f"{origin} {as_of}".strip()
    by_id: dict[str, ModelPrice] = {}
    for model, entry in models.items():
        where = f"models.{model}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be an object with {', '.join(_REQUIRED_FIELDS)}")
        _check_keys(entry, _MODEL_KEYS, where)
        rates = _rates(entry, where)
        long_prompt, above = None, 0
        if "long_prompt" in entry:
            tier = entry["long_prompt"]
            if not isinstance(tier, dict):
                raise ValueError(f"{where}.long_prompt must be an object")
            _check_keys(tier, _TIER_KEYS, f"{where}.long_prompt")
            above_value = tier.get("above_prompt_tokens")
            if not isinstance(above_value, Decimal) or above_value != above_value.to_integral() or above_value < 0:
                raise ValueError(f"{where}.long_prompt.above_prompt_tokens must be a whole number of tokens")
            long_prompt, above = _rates(tier, f"{where}.long_prompt"), int(above_value)
        fast = None
        if "fast" in entry:
            if not isinstance(entry["fast"], dict):
                raise ValueError(f"{where}.fast must be an object")
            _check_keys(entry["fast"], frozenset(_RATE_FIELDS), f"{where}.fast")
            fast = _rates(entry["fast"], f"{where}.fast")
        web_search = _number(entry, "web_search", where) if "web_search" in entry else DEFAULT_WEB_SEARCH
        price = ModelPrice(str(model), rates, source, web_search, long_prompt, above, fast)
        names = entry.get("aliases", [])
        if not isinstance(names, list) or not all(isinstance(alias, str) for alias in names):
            raise ValueError(f"{where}.aliases must be a list of model ids")
        for id_ in (model, *names):
            if id_.lower() in by_id:
                raise ValueError(f"model id {id_} appears more than once")
            by_id[id_.lower()] = price
    return by_id


def _check_keys(entry: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {', '.join(unknown)}")
    missing = [field for field in _REQUIRED_FIELDS if field not in entry]
    if missing:
        raise ValueError(f"{where} is missing {', '.join(missing)}")


def _number(entry: dict[str, Any], field: str, where: str) -> Decimal:
    value = entry[field]
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError(f"{where}.{field} must be a number, got {value!r}")
    if value < 0:
        raise ValueError(f"{where}.{field} must not be negative, got {value}")
    return value


def _rates(entry: dict[str, Any], where: str) -> Rates:
    values = {field: _number(entry, field, where) for field in _REQUIRED_FIELDS}
    one_hour = (
        _number(entry, "cache_write_1h", where)
        if "cache_write_1h" in entry
        else values["input"] * ONE_HOUR_WRITE_PER_INPUT
    )
    return Rates(values["input"], values["output"], values["cache_write"], one_hour, values["cache_read"])
