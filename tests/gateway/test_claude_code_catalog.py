"""The gateway's prices and model table against Anthropic's own model catalog, as the pinned Claude Code CLI
carries it (read from the installed binary): a drift in either fails here."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.models import ModelTable
from gateway.price_sources import load_prices
from gateway.pricing import RULE_LIST, PriceTable, Rates
from tests.support import claude_code

pytestmark = pytest.mark.slow

# Where the gateway deliberately differs from the catalog, and why.
KNOWN_DIFFERENCES = {
    # Anthropic bills Sonnet 4.5 prompts over 200k tokens (1M-context beta) at $6/$22.50 per million; genai-prices
    # has that tier and Claude Code 2.1.332's catalog does not, so below 200k both agree and above it we follow
    # the bill.
    "claude-sonnet-4-5": "long_prompt",
}


@pytest.fixture(scope="module")
def catalog() -> dict[str, Any]:
    return claude_code.catalog(claude_code.install())


@pytest.fixture(scope="module")
def prices() -> PriceTable:
    return load_prices()


def rates(tier: dict[str, Any]) -> Rates:
    return Rates(
        *(Decimal(str(tier[key])) for key in ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read"))
    )


def test_the_catalog_lists_todays_models(catalog: dict[str, Any]) -> None:
    ids = {model["id"] for model in catalog["models"]}
    assert {"claude-opus-5-5", "claude-sonnet-5-5", "claude-haiku-5-5", "claude-fable-5-2"} <= ids
    assert catalog["latest_per_family"]["opus"] == "claude-opus-5-5"


def test_every_catalog_model_is_priced_as_claude_code_prices_it(catalog: dict[str, Any], prices: PriceTable) -> None:
    checked = 0
    for model in catalog["models"]:
        tier = catalog["pricing_tiers"][model["pricing"]]
        for name in {model["id"], model["provider_ids"]["first_party"]}:
            price, rule = prices.price_for(name)
            assert rule == RULE_LIST, f"{name} has no price of its own"
            assert price.rates == rates(tier), name
            assert price.web_search == Decimal(str(tier["web_search"])), name
            if KNOWN_DIFFERENCES.get(model["id"]) == "long_prompt":
                continue
            long_prompt = tier.get("long_prompt")
            if long_prompt is None:
                assert price.long_prompt is None, name
            else:
                assert price.long_prompt == rates(long_prompt), name
                assert price.long_prompt_above == long_prompt["above_prompt_tokens"], name
            checked += 1
    expected = sum(
        len({m["id"], m["provider_ids"]["first_party"]}) for m in catalog["models"] if m["id"] not in KNOWN_DIFFERENCES
    )
    assert checked == expected >= 30


def test_every_catalog_model_is_listed_and_mapped_to_its_vertex_id(catalog: dict[str, Any]) -> None:
    table = ModelTable.load()
    listed = set(table.ids)
    for model in catalog["models"]:
        ids = model["provider_ids"]
        assert {model["id"], ids["first_party"]} <= listed
        vertex = ids.get("vertex")
        if vertex is not None:
            assert table.to_vertex(model["id"]) == vertex
            assert table.to_vertex(ids["first_party"]) == vertex
            assert table.to_anthropic(vertex) == model["id"]


def test_pinned_version_file_holds_one_version() -> None:
    text = Path(claude_code.VERSION_FILE).read_text()
    assert text.count("\n") == 1 and text.strip().count(".") == 2
