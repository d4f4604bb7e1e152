from __future__ import annotations

import json
import re
import typing
from datetime import date, datetime
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from gateway.metering import Usage
from gateway.price_sources import GenaiPrices, load_prices, read_price_file
from gateway.pricing import RULE_FAMILY_MAX, RULE_LIST, RULE_OVERALL_MAX, PriceTable, Rates


@pytest.fixture
def table() -> PriceTable:
    return load_prices()


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
        # input, output, 5-minute cache write, 1-hour cache write, cache read: USD per million tokens.
        ("claude-opus-5-5", ("4", "20", "5", "8", "0.2")),
        ("claude-sonnet-5-5", ("2", "10", "2.5", "4", "0.1")),
        ("claude-haiku-5-5", ("0.1", "0.5", "0.125", "0.2", "0.01")),
        ("claude-fable-5-2", ("8", "40", "10", "16", "0.2")),
        ("claude-opus-4-5", ("5", "25", "6.25", "10", "0.5")),
        ("claude-opus-4-1", ("15", "75", "18.75", "30", "1.5")),
        ("claude-haiku-4-5", ("1", "5", "1.25", "2", "0.1")),
        ("claude-3-5-haiku", ("0.8", "4", "1", "1.6", "0.08")),
    ],
)
def test_list_prices_for_today_and_older_models(table: PriceTable, model: str, prices: tuple[str, ...]) -> None:
    price, rule = table.price_for(model)
    assert rule == RULE_LIST
    assert price.rates == Rates(*(Decimal(p) for p in prices))


def test_sources_name_the_library_version_and_the_gap_table_date(table: PriceTable) -> None:
    assert table.sources == ["packaged gap table 2026-12-01", f"genai-prices {metadata.version('genai-prices')}"]
    assert table.cost("claude-opus-5-5", Usage(output_tokens=1)).source.startswith("genai-prices ")
    assert table.cost("claude-mythos-5", Usage(output_tokens=1)).source == "packaged gap table 2026-12-01"


@pytest.mark.parametrize(
    ("reported", "model"),
    [
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
        ("claude-opus-4-5@20251101", "claude-opus-4-5"),
        ("claude-opus-4-1@20250805", "claude-opus-4-1"),
        ("claude-opus-4@20250514", "claude-opus-4-0"),
        ("claude-opus-4-20250514", "claude-opus-4-0"),
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
        ("claude-3-7-sonnet-latest", "claude-3-7-sonnet-latest"),
        ("claude-haiku-4-5@20251001", "claude-haiku-4-5"),
        ("publishers/anthropic/models/claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
        ("Claude-Opus-5-5", "claude-opus-5-5"),
        ("claude-opus-5-5[1m]", "claude-opus-5-5"),
        ("claude-opus-4-6", "claude-opus-4-6"),
    ],
)
def test_dated_vertex_and_alias_ids_match_their_model(table: PriceTable, reported: str, model: str) -> None:
    price, rule = table.price_for(reported)
    assert (price.model, rule) == (model, RULE_LIST)


def test_newer_model_is_not_priced_as_an_older_one_sharing_its_prefix(table: PriceTable) -> None:
    assert table.price_for("claude-opus-5-5")[0].rates.input == 4
    assert table.price_for("claude-opus-5")[0].rates.input == 5


def test_cost_prices_each_kind_of_token_separately(table: PriceTable) -> None:
    usage = Usage(
        input_tokens=1_000, output_tokens=500, cache_creation_input_tokens=2_000, cache_read_input_tokens=10_000
    )
    # 1000*4 + 500*20 + 2000*5 + 10000*0.2 = 4000 + 10000 + 10000 + 2000 micro-dollars.
    assert table.cost("claude-opus-5-5", usage).cost_usd == 0.026


def test_cache_writes_are_priced_by_their_ttl(table: PriceTable) -> None:
    one_hour = Usage(cache_creation_input_tokens=MILLION, cache_creation_1h_input_tokens=MILLION)
    split = Usage(cache_creation_input_tokens=3 * MILLION, cache_creation_1h_input_tokens=MILLION)
    assert table.cost("claude-opus-5-5", Usage(cache_creation_input_tokens=MILLION)).cost_usd == 5.0
    assert table.cost("claude-opus-5-5", one_hour).cost_usd == 8.0
    assert table.cost("claude-opus-5-5", split).cost_usd == 8.0 + 2 * 5.0
    # A 1-hour count larger than the writes it is part of is held to them.
    too_many = Usage(cache_creation_input_tokens=MILLION, cache_creation_1h_input_tokens=5 * MILLION)
    assert table.cost("claude-opus-5-5", too_many).cost_usd == 8.0


def test_long_prompt_tier_counts_input_cache_reads_and_writes(table: PriceTable) -> None:
    at_limit = Usage(
        input_tokens=60_000, cache_read_input_tokens=30_000, cache_creation_input_tokens=10_000, output_tokens=MILLION
    )
    over = Usage(
        input_tokens=60_000, cache_read_input_tokens=30_000, cache_creation_input_tokens=10_001, output_tokens=MILLION
    )
    # 100,000 prompt tokens is still the base tier; one more and the whole request is at the long-prompt rates.
    assert table.cost("claude-haiku-5-5", at_limit).cost_usd == pytest.approx(
        (60_000 * 0.1 + 30_000 * 0.01 + 10_000 * 0.125) / MILLION + 0.5
    )
    assert table.cost("claude-haiku-5-5", over).cost_usd == pytest.approx(
        (60_000 * 0.5 + 30_000 * 0.05 + 10_001 * 0.625) / MILLION + 2.5
    )


def test_long_prompt_tier_is_chosen_per_sampling_iteration(table: PriceTable) -> None:
    iterations = [
        {
            "type": "message",
            "input_tokens": 90_000,
            "output_tokens": 10,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
        {
            "type": "message",
            "input_tokens": 120_000,
            "output_tokens": 20,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    ]
    usage = Usage(
        input_tokens=210_000,
        output_tokens=30,
        cache_read_input_tokens=0,
        cache_creation_input_tokens=0,
        iterations=iterations,
    )
    expected = (90_000 * 0.1 + 10 * 0.5 + 120_000 * 0.5 + 20 * 2.5) / MILLION
    assert table.cost("claude-haiku-5-5", usage).cost_usd == pytest.approx(expected)
    # Iterations that do not add up to the totals are not trusted: the totals are priced as one request.
    usage.iterations = iterations[:1]
    assert table.cost("claude-haiku-5-5", usage).cost_usd == pytest.approx((210_000 * 0.5 + 30 * 2.5) / MILLION)


def test_web_searches_cost_a_cent_each_and_us_inference_a_tenth_more(table: PriceTable) -> None:
    usage = Usage(input_tokens=MILLION, web_search_requests=3)
    assert table.cost("claude-sonnet-5-5", usage).cost_usd == pytest.approx(2.03)
    usage.inference_geo = "us"
    # The premium is on tokens; the search fee is flat.
    assert table.cost("claude-sonnet-5-5", usage).cost_usd == pytest.approx(2.2 + 0.03)
    usage.inference_geo = "global"
    assert table.cost("claude-sonnet-5-5", usage).cost_usd == pytest.approx(2.03)


@pytest.mark.parametrize(
    ("model", "output_rate"),
    [("claude-opus-5-5", 40), ("claude-fable-5-2", 80), ("claude-opus-4-6", 150), ("claude-haiku-4-5", 5)],
)
def test_fast_mode_has_its_own_prices_where_a_model_offers_it(table: PriceTable, model: str, output_rate: int) -> None:
    assert table.cost(model, Usage(output_tokens=MILLION, speed="fast")).cost_usd == output_rate


def test_unknown_model_of_a_known_family_pays_the_familys_highest_list_price(
    table: PriceTable, caplog: pytest.LogCaptureFixture
) -> None:
    before = table.fallback_requests
    with caplog.at_level("WARNING", logger="gateway.pricing"):
        first = table.cost("claude-opus-9-1", Usage(input_tokens=MILLION, output_tokens=MILLION))
        second = table.cost("claude-opus-9-1", Usage(output_tokens=MILLION))
    assert (first.rule, first.cost_usd) == (RULE_FAMILY_MAX, 15 + 75)  # Opus's highest list price, $15/$75
    assert second.cost_usd == 75
    assert table.fallback_requests == before + 2
    assert [r.getMessage() for r in caplog.records].count(
        "pricing: no price for model 'claude-opus-9-1'; charging claude-3-opus-latest's list price (family_max) "
        "until a price is known"
    ) == 1
    assert "gateway_price_fallback_requests_total" in table.prometheus_text()


@pytest.mark.parametrize("reported", [None, "", "gpt-4o", "house-model"])
def test_a_model_of_no_known_family_pays_the_highest_list_price_of_all(table: PriceTable, reported: str | None) -> None:
    priced = table.cost(reported, Usage(output_tokens=MILLION))
    assert (priced.rule, priced.cost_usd) == (RULE_OVERALL_MAX, 75)


def test_counts_not_reported_cost_nothing(table: PriceTable) -> None:
    assert table.cost("claude-opus-5-5", Usage()).cost_usd == 0.0
    assert table.cost("claude-opus-5-5", Usage(output_tokens=2_000)).cost_usd == 0.04


def test_lookup_is_cached_per_model_string(table: PriceTable) -> None:
    first = table.price_for("claude-sonnet-4-5@20250929")
    assert table.price_for("claude-sonnet-4-5@20250929") is first


def test_many_distinct_model_strings_do_not_break_lookup() -> None:
    table = load_prices()
    for i in range(5000):
        table.price_for(f"client-chosen-{i}")
    assert table.price_for("claude-haiku-4-5")[0].rates.output == 5


def test_operator_file_takes_precedence_for_the_models_it_names(tmp_path: Path) -> None:
    opus = {
        "input": 2,
        "output": 10,
        "cache_write": 2.5,
        "cache_read": 0.2,
        "aliases": ["house-opus"],
        "long_prompt": {"above_prompt_tokens": 500_000, "input": 4, "output": 20, "cache_write": 5, "cache_read": 0.4},
        "fast": {"input": 6, "output": 30, "cache_write": 7.5, "cache_read": 0.6},
    }
    table = load_prices(write(tmp_path, valid_file(**{"claude-opus-5-5": opus})))

    priced = table.cost("claude-opus-5-5", Usage(input_tokens=400_000, output_tokens=MILLION))
    assert (priced.cost_usd, priced.rule) == (10.8, RULE_LIST)
    assert priced.source == f"pricing file {tmp_path}/prices.json 2026-01-01"
    assert table.cost("house-opus", Usage(input_tokens=600_000)).cost_usd == pytest.approx(2.4)  # long-prompt tier
    assert table.cost("claude-opus-5-5", Usage(output_tokens=MILLION, speed="fast")).cost_usd == 30
    # A 1-hour write price left out is Anthropic's: twice the input price.
    one_hour = Usage(cache_creation_input_tokens=400_000, cache_creation_1h_input_tokens=400_000)
    assert table.cost("claude-opus-5-5", one_hour).cost_usd == pytest.approx(1.6)
    # Models the file does not name keep their list prices.
    assert table.cost("claude-sonnet-5-5", Usage(input_tokens=MILLION)).cost_usd == 2.0


def test_operator_file_without_metadata_beyond_unit_is_accepted(tmp_path: Path) -> None:
    data = valid_file()
    del data["source"], data["as_of"], data["currency"]
    assert load_prices(write(tmp_path, data)).price_for("claude-sonnet-4-5")[0].rates.input == 2


def test_every_gap_table_entry_is_something_genai_prices_lacks_or_has_otherwise() -> None:
    """The gap table must shrink as the library catches up: an entry the library now matches is stale."""
    path = Path(__file__).parents[2] / "gateway" / "data" / "pricing.json"
    gaps = PriceTable([read_price_file(str(path))])
    library = PriceTable([], GenaiPrices())
    for model in json.loads(path.read_text())["models"]:
        ours, theirs = gaps.price_for(model)[0], library.price_for(model)
        assert theirs[1] != RULE_LIST or (ours.rates, ours.long_prompt, ours.fast) != (
            theirs[0].rates,
            theirs[0].long_prompt,
            theirs[0].fast,
        ), f"{model} no longer needs a gap entry"


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
        ({"unit": "USD per million tokens", "models": {"m": _entry(fast={"input": 1})}}, "models.m.fast is missing"),
        (
            {"unit": "USD per million tokens",
             "models": {"m": _entry(long_prompt={**_entry(), "above_prompt_tokens": 1.5})}},
            "models.m.long_prompt.above_prompt_tokens must be a whole number",
        ),
        ({"unit": "USD per million tokens", "models": {"m": _entry(web_search=-0.01)}},
         "models.m.web_search must not be negative"),
        (
            {"unit": "USD per million tokens", "models": {"m": _entry(), "n": _entry(aliases=["m"])}},
            "model id m appears more than once",
        ),
    ],
    ids=[
        "not-json", "nan", "not-object", "no-unit", "wrong-unit", "wrong-currency", "no-models", "empty-models",
        "entry-not-object", "missing-field", "negative", "string-price", "bool-price", "typo-field", "bad-aliases",
        "fast-missing-field", "fractional-tier-threshold", "negative-search-fee", "duplicate-id",
    ],
)  # fmt: skip
def test_broken_file_raises_value_error_naming_file_and_reason(tmp_path: Path, data: Any, reason: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ValueError) as excinfo:
        load_prices(path)
    assert path in str(excinfo.value)
    assert reason in str(excinfo.value)


def test_missing_file_raises_value_error_naming_it(tmp_path: Path) -> None:
    path = str(tmp_path / "nowhere.json")
    with pytest.raises(ValueError, match="cannot be read") as excinfo:
        load_prices(path)
    assert path in str(excinfo.value)


def test_file_that_is_not_utf8_raises_value_error(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_bytes(b'{"unit": "\xff"}')
    with pytest.raises(ValueError, match="cannot be read"):
        load_prices(str(path))


def test_every_model_the_anthropic_sdk_names_has_a_list_price(table: PriceTable) -> None:
    """A new SDK release naming a model we cannot price fails here, before a budget silently mis-charges it."""
    from anthropic.resources.messages.messages import DEPRECATED_MODELS
    from anthropic.types.model import Model

    (literal, _) = typing.get_args(Model)
    names = typing.get_args(literal)
    assert "claude-opus-5-5" in names
    # Models past the end of life the SDK states for them are no longer served, so need no price.
    retired = {name for name, end in DEPRECATED_MODELS.items() if _sdk_date(end) < date.today()}
    unpriced = [name for name in names if name not in retired and table.price_for(name)[1] != RULE_LIST]
    assert unpriced == []


def _sdk_date(text: str) -> date:
    """'January 22nd, 2027' as a date."""
    month, day, year = re.sub(r"(\d+)(st|nd|rd|th)", r"\1", text).replace(",", "").split()
    return datetime.strptime(f"{month} {day} {year}", "%B %d %Y").date()
