from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.metering import Usage
from gateway.pricing import PriceTable


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def write(tmp_path: Path, data: Any) -> str:
    path = tmp_path / "prices.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(path)


def valid_file(**models: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": "negotiated contract, schedule B",
        "as_of": "2026-01-01",
        "currency": "USD",
        "unit": "USD per million tokens",
        "models": models or {"claude-sonnet-4-5": {"input": 2, "output": 10, "cache_write": 2.5, "cache_read": 0.2}},
    }


MILLION = 1_000_000


@pytest.mark.parametrize(
    ("model", "prices"),
    [
        ("claude-opus-4-5", ("5", "25", "6.25", "0.50")),
        ("claude-opus-4-1", ("15", "75", "18.75", "1.50")),
        ("claude-opus-4", ("15", "75", "18.75", "1.50")),
        ("claude-sonnet-4-5", ("3", "15", "3.75", "0.30")),
        ("claude-sonnet-4", ("3", "15", "3.75", "0.30")),
        ("claude-3-7-sonnet", ("3", "15", "3.75", "0.30")),
        ("claude-haiku-4-5", ("1", "5", "1.25", "0.10")),
        ("claude-3-5-haiku", ("0.80", "4", "1", "0.08")),
        ("claude-3-haiku", ("0.25", "1.25", "0.30", "0.03")),
    ],
)
def test_packaged_table_has_list_prices_for_each_family(
    table: PriceTable, model: str, prices: tuple[str, str, str, str]
) -> None:
    price = table.price_for(model)
    assert price is not None
    assert (price.input, price.output, price.cache_write, price.cache_read) == tuple(Decimal(p) for p in prices)


def test_packaged_table_names_its_source_and_date(table: PriceTable) -> None:
    assert "anthropic.com/pricing" in table.source
    assert table.as_of == "2025-11-24"


@pytest.mark.parametrize(
    ("reported", "model"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-opus-4-1@20250805", "claude-opus-4-1"),
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-opus-4@20250514", "claude-opus-4"),
        ("claude-opus-4-0", "claude-opus-4"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-sonnet-4-0", "claude-sonnet-4"),
        ("claude-3-7-sonnet-20250219", "claude-3-7-sonnet"),
        ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-haiku-4-5@20251001", "claude-haiku-4-5"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-3-5-haiku@20241022", "claude-3-5-haiku"),
        ("claude-3-haiku-20240307", "claude-3-haiku"),
        ("publishers/anthropic/models/claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
        ("Claude-Sonnet-4-5", "claude-sonnet-4-5"),
    ],
)
def test_dated_vertex_and_alias_ids_match_their_model(table: PriceTable, reported: str, model: str) -> None:
    price = table.price_for(reported)
    assert price is not None
    assert price.model == model


@pytest.mark.parametrize(
    "reported",
    [None, "", "gpt-4o", "claude-opus-4-7", "claude-sonnet-4-5-2025", "claude-opus", "claude-opus-4-5-20251101-v2"],
)
def test_unknown_model_has_no_price_and_no_cost(table: PriceTable, reported: str | None) -> None:
    assert table.price_for(reported) is None
    assert table.cost(reported, Usage(input_tokens=1000, output_tokens=1000)) is None


def test_newer_model_is_not_priced_as_an_older_one_sharing_its_prefix(table: PriceTable) -> None:
    opus_4_5 = table.price_for("claude-opus-4-5-20251101")
    assert opus_4_5 is not None
    assert opus_4_5.input == 5


def test_cost_prices_each_kind_of_token_separately(table: PriceTable) -> None:
    usage = Usage(
        input_tokens=1_000, output_tokens=500, cache_creation_input_tokens=2_000, cache_read_input_tokens=10_000
    )
    # 1000*3 + 500*15 + 2000*3.75 + 10000*0.30 = 3000 + 7500 + 7500 + 3000 micro-dollars.
    assert table.cost("claude-sonnet-4-5-20250929", usage) == 0.021


def test_cache_reads_cost_a_tenth_of_input_and_writes_a_quarter_more(table: PriceTable) -> None:
    assert table.cost("claude-opus-4-5", Usage(cache_read_input_tokens=MILLION)) == 0.5
    assert table.cost("claude-opus-4-5", Usage(cache_creation_input_tokens=MILLION)) == 6.25
    assert table.cost("claude-opus-4-5", Usage(input_tokens=MILLION)) == 5.0
    assert table.cost("claude-3-haiku", Usage(cache_read_input_tokens=3)) == 9e-08


def test_cost_is_exact_for_prices_that_are_not_binary_fractions(table: PriceTable) -> None:
    usage = Usage(input_tokens=7, output_tokens=3, cache_creation_input_tokens=11, cache_read_input_tokens=13)
    # 7*0.80 + 3*4 + 11*1 + 13*0.08 = 5.6 + 12 + 11 + 1.04 = 29.64 micro-dollars.
    assert table.cost("claude-3-5-haiku", usage) == 29.64e-6


def test_counts_not_reported_cost_nothing(table: PriceTable) -> None:
    assert table.cost("claude-sonnet-4-5", Usage()) == 0.0
    assert table.cost("claude-sonnet-4-5", Usage(output_tokens=2_000)) == 0.03


def test_lookup_is_cached_per_model_string(table: PriceTable) -> None:
    first = table.price_for("claude-sonnet-4-5@20250929")
    assert table.price_for("claude-sonnet-4-5@20250929") is first


def test_many_distinct_model_strings_do_not_break_lookup() -> None:
    table = PriceTable.load()
    for i in range(5000):
        table.price_for(f"client-chosen-{i}")
    price = table.price_for("claude-haiku-4-5")
    assert price is not None
    assert price.output == 5


def test_override_file_replaces_the_packaged_table(tmp_path: Path) -> None:
    sonnet = {"input": 2, "output": 10, "cache_write": 2.5, "cache_read": 0.2, "aliases": ["house-sonnet"]}
    data = valid_file(**{"claude-sonnet-4-5": sonnet})
    table = PriceTable.load(write(tmp_path, data))
    assert (table.source, table.as_of) == ("negotiated contract, schedule B", "2026-01-01")
    assert table.models == ["claude-sonnet-4-5"]
    assert table.cost("claude-sonnet-4-5@20250929", Usage(input_tokens=MILLION, output_tokens=MILLION)) == 12.0
    assert table.cost("house-sonnet", Usage(cache_read_input_tokens=MILLION)) == 0.2
    assert table.price_for("claude-opus-4-5") is None


def test_override_file_without_metadata_beyond_unit_is_accepted(tmp_path: Path) -> None:
    data = valid_file()
    del data["source"], data["as_of"], data["currency"]
    assert PriceTable.load(write(tmp_path, data)).models == ["claude-sonnet-4-5"]


def test_packaged_file_is_valid_and_matches_what_load_reads() -> None:
    path = Path(__file__).parents[2] / "gateway" / "data" / "pricing.json"
    assert PriceTable.load(str(path)).models == PriceTable.load().models


def _entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3}
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not ...}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("{not json", "not valid JSON"),
        ('{"unit": "USD per million tokens", "models": {"m": {"input": NaN}}}', "not valid JSON"),
        ([1, 2], "top level must be a JSON object"),
        ({"models": {"m": _entry()}}, '"unit" must be "USD per million tokens"'),
        ({"unit": "USD per thousand tokens", "models": {"m": _entry()}}, '"unit" must be'),
        ({"unit": "USD per million tokens", "currency": "EUR", "models": {"m": _entry()}}, '"currency" must be "USD"'),
        ({"unit": "USD per million tokens"}, '"models" must be a non-empty object'),
        ({"unit": "USD per million tokens", "models": {}}, '"models" must be a non-empty object'),
        ({"unit": "USD per million tokens", "models": {"m": 3}}, "models.m must be an object"),
        ({"unit": "USD per million tokens", "models": {"m": _entry(cache_read=...)}}, "models.m is missing cache_read"),
        ({"unit": "USD per million tokens", "models": {"m": _entry(input=-1)}}, "models.m.input must not be negative"),
        ({"unit": "USD per million tokens", "models": {"m": _entry(output="15")}}, "models.m.output must be a number"),
        ({"unit": "USD per million tokens", "models": {"m": _entry(output=True)}}, "models.m.output must be a number"),
        ({"unit": "USD per million tokens", "models": {"m": _entry(cache_writes=1)}}, "unknown field(s) cache_writes"),
        ({"unit": "USD per million tokens", "models": {"m": _entry(aliases="x")}}, "models.m.aliases must be a list"),
        (
            {"unit": "USD per million tokens", "models": {"m": _entry(), "n": _entry(aliases=["m"])}},
            "model id m appears more than once",
        ),
    ],
    ids=[
        "not-json", "nan", "not-object", "no-unit", "wrong-unit", "wrong-currency", "no-models", "empty-models",
        "entry-not-object", "missing-field", "negative", "string-price", "bool-price", "typo-field", "bad-aliases",
        "duplicate-id",
    ],
)  # fmt: skip
def test_broken_file_raises_value_error_naming_file_and_reason(tmp_path: Path, data: Any, reason: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ValueError) as excinfo:
        PriceTable.load(path)
    assert path in str(excinfo.value)
    assert reason in str(excinfo.value)


def test_missing_file_raises_value_error_naming_it(tmp_path: Path) -> None:
    path = str(tmp_path / "nowhere.json")
    with pytest.raises(ValueError, match="cannot be read") as excinfo:
        PriceTable.load(path)
    assert path in str(excinfo.value)


def test_file_that_is_not_utf8_raises_value_error(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_bytes(b'{"unit": "\xff"}')
    with pytest.raises(ValueError, match="cannot be read"):
        PriceTable.load(str(path))
