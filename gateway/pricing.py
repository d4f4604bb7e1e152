"""What a response cost: a pricing table loaded from JSON data, matched to the model ids upstreams report."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from typing import Any

from gateway.metering import Usage

UNIT = "USD per million tokens"
PACKAGED = "gateway/data/pricing.json (packaged default)"

_PRICE_FIELDS = ("input", "output", "cache_write", "cache_read")
_MODEL_KEYS = frozenset((*_PRICE_FIELDS, "aliases"))
_MILLION = Decimal(1_000_000)
_DATE_SUFFIX = re.compile(r"-\d{8}$")
# Model strings can come from clients; past this many distinct ones the lookup cache starts over.
_CACHE_LIMIT = 1024


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """List prices for one model, in USD per million tokens."""

    model: str
    input: Decimal
    output: Decimal
    cache_write: Decimal
    cache_read: Decimal

    def cost(self, usage: Usage) -> float:
        """USD for the tokens in `usage`; a count the upstream did not report counts as zero."""
        # Decimal keeps sums of list prices like 0.30 and 3.75 exact until the one rounding to float.
        total = (
            (usage.input_tokens or 0) * self.input
            + (usage.output_tokens or 0) * self.output
            + (usage.cache_creation_input_tokens or 0) * self.cache_write
            + (usage.cache_read_input_tokens or 0) * self.cache_read
        )
        return float(total / _MILLION)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a price")


class PriceTable:
    """Model prices by id, with the lookup from an upstream's model string cached."""

    def __init__(
        self, prices: list[ModelPrice], aliases: dict[str, str] | None = None, *, source: str = "", as_of: str = ""
    ) -> None:
        self.source = source
        self.as_of = as_of
        self._by_id: dict[str, ModelPrice] = {price.model.lower(): price for price in prices}
        for alias, model in (aliases or {}).items():
            self._by_id[alias.lower()] = self._by_id[model.lower()]
        self._cache: dict[str | None, ModelPrice | None] = {}

    @property
    def models(self) -> list[str]:
        """The canonical model ids priced, without aliases."""
        return sorted({price.model for price in self._by_id.values()})

    @classmethod
    def load(cls, path: str | None = None) -> PriceTable:
        """Read a pricing file, or the packaged default; a bad file raises ValueError naming it and why."""
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
            return cls._from_data(data)
        except ValueError as exc:
            raise ValueError(f"pricing file {name}: {exc}") from exc

    @classmethod
    def _from_data(cls, data: object) -> PriceTable:
        if not isinstance(data, dict):
            raise ValueError("the top level must be a JSON object")
        if data.get("unit") != UNIT:
            raise ValueError(f'"unit" must be "{UNIT}", got {data.get("unit")!r}')
        if data.get("currency", "USD") != "USD":
            raise ValueError(f'"currency" must be "USD", got {data.get("currency")!r}')
        source, as_of = data.get("source", ""), data.get("as_of", "")
        if not isinstance(source, str) or not isinstance(as_of, str):
            raise ValueError('"source" and "as_of" must be strings')
        models = data.get("models")
        if not isinstance(models, dict) or not models:
            raise ValueError('"models" must be a non-empty object of model id to prices')

        prices: list[ModelPrice] = []
        aliases: dict[str, str] = {}
        seen: set[str] = set()
        for model, entry in models.items():
            where = f"models.{model}"
            if not isinstance(entry, dict):
                raise ValueError(f"{where} must be an object with {', '.join(_PRICE_FIELDS)}")
            unknown = sorted(set(entry) - _MODEL_KEYS)
            if unknown:
                raise ValueError(f"{where} has unknown field(s) {', '.join(unknown)}")
            missing = [field for field in _PRICE_FIELDS if field not in entry]
            if missing:
                raise ValueError(f"{where} is missing {', '.join(missing)}")
            values: list[Decimal] = []
            for field in _PRICE_FIELDS:
                value = entry[field]
                if not isinstance(value, Decimal) or not value.is_finite():
                    raise ValueError(f"{where}.{field} must be a number, got {value!r}")
                if value < 0:
                    raise ValueError(f"{where}.{field} must not be negative, got {value}")
                values.append(value)
            names = entry.get("aliases", [])
            if not isinstance(names, list) or not all(isinstance(alias, str) for alias in names):
                raise ValueError(f"{where}.aliases must be a list of model ids")
            for id_ in (model, *names):
                if id_.lower() in seen:
                    raise ValueError(f"model id {id_} appears more than once")
                seen.add(id_.lower())
            aliases.update((alias, model) for alias in names)
            prices.append(ModelPrice(model, *values))
        return cls(prices, aliases, source=source, as_of=as_of)

    def price_for(self, model: str | None) -> ModelPrice | None:
        """The prices for a model string as an upstream reports it, or None when not in the table."""
        try:
            return self._cache[model]
        except KeyError:
            pass
        price = self._match(model) if model else None
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[model] = price
        return price

    def cost(self, model: str | None, usage: Usage) -> float | None:
        """USD for one response; None when the model is not priced."""
        price = self.price_for(model)
        return None if price is None else price.cost(usage)

    def _match(self, model: str) -> ModelPrice | None:
        by_id = self._by_id
        candidate = model.strip().lower()
        if candidate in by_id:
            return by_id[candidate]
        # Vertex AI: `publishers/anthropic/models/claude-sonnet-4-5@20250929`; the version follows the `@`.
        candidate = candidate.rpartition("/")[2].partition("@")[0]
        if candidate in by_id:
            return by_id[candidate]
        # Anthropic: dated snapshots `claude-sonnet-4-5-20250929` and aliases `claude-3-5-haiku-latest`.
        return by_id.get(_DATE_SUFFIX.sub("", candidate.removesuffix("-latest")))
