from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx
import pytest

from gateway.config import Settings
from gateway.models import ModelTable, model_filter
from gateway.resources import Resources
from tests.gateway.conftest import AUDIENCE, Stack, StackFactory

PACKAGED_TABLE = Path(__file__).parents[2] / "gateway" / "data" / "models.json"
PACKAGED_IDS = list(json.loads(PACKAGED_TABLE.read_text())["models"])


def list_models(stack: Stack, email: str = "ada@example.com") -> httpx.Response:
    return httpx.get(stack.url + "/v1/models", headers=stack.headers(email), timeout=10)


def test_models_are_listed_from_the_model_table_in_anthropic_form(stack: Stack) -> None:
    response = list_models(stack)

    assert response.status_code == 200
    listing = response.json()
    assert [m["id"] for m in listing["data"]] == PACKAGED_IDS  # the table's order: newest first
    assert PACKAGED_IDS[0] == "claude-opus-5-5"  # Claude Code 2.1.332's default model
    by_id = {m["id"]: m for m in listing["data"]}
    assert by_id["claude-opus-4-5-20251101"] == {
        "type": "model",
        "id": "claude-opus-4-5-20251101",
        "display_name": "Claude Opus 4.5",
        "created_at": "2025-11-01T00:00:00Z",
    }
    # Today's ids carry no date, and the table does not make one up.
    assert by_id["claude-opus-5-5"]["created_at"] == "1970-01-01T00:00:00Z"
    assert (listing["has_more"], listing["first_id"], listing["last_id"]) == (False, PACKAGED_IDS[0], PACKAGED_IDS[-1])
    assert stack.upstream.requests == []  # answered by the gateway, whichever upstream is configured
    row = stack.rows(1)[0]
    assert (row["path"], row["status_code"], row["outcome"]) == ("/v1/models", 200, "ok")
    assert (row["upstream"], row["attempts"]) == (None, 0)


def test_configured_table_replaces_the_packaged_one(make_stack: StackFactory) -> None:
    table = {
        "claude-sonnet-4-5": "claude-sonnet-4-5@20250929",
        "claude-house-model": {"vertex_id": "claude-house@20260101", "display_name": "House model"},
    }
    with make_stack(models=table) as stack:
        data = list_models(stack).json()["data"]

    assert data == [  # in the table's order
        {
            "type": "model",
            "id": "claude-sonnet-4-5",
            "display_name": "Claude Sonnet 4.5",
            "created_at": "2025-09-29T00:00:00Z",
        },
        {
            "type": "model",
            "id": "claude-house-model",
            "display_name": "House model",
            "created_at": "2026-01-01T00:00:00Z",
        },
    ]


def test_models_setting_is_read_as_json_from_either_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_DEV_MODE", "1")
    monkeypatch.setenv("GATEWAY_VERTEX_MODELS", '{"claude-x": "claude-x@20260202"}')
    assert Settings().models == {"claude-x": "claude-x@20260202"}

    monkeypatch.setenv("GATEWAY_MODELS", '{"claude-y": {"vertex_id": "claude-y@1"}}')
    assert Settings().models == {"claude-y": {"vertex_id": "claude-y@1"}}


POLICY = """
version: 1
default:
  models: [claude-haiku-*]
groups:
  research@example.com:
    models: [claude-opus-*, CLAUDE-SONNET-4-5]
  admins@example.com:
    models: unlimited
members:
  research@example.com: [ada@example.com]
  admins@example.com: [margaret@example.com]
"""


def test_each_caller_sees_only_the_models_their_policy_allows(make_stack: StackFactory, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with make_stack(policy_file=str(policy), group_resolver="static") as stack:
        ada = [m["id"] for m in list_models(stack, "ada@example.com").json()["data"]]
        grace = [m["id"] for m in list_models(stack, "grace@example.com").json()["data"]]
        margaret = [m["id"] for m in list_models(stack, "margaret@example.com").json()["data"]]

    assert ada == [m for m in PACKAGED_IDS if m.startswith("claude-opus-") or m == "claude-sonnet-4-5"]
    assert "claude-opus-5-5" in ada and "claude-sonnet-5-5" not in ada
    assert grace == ["claude-haiku-5-5", "claude-haiku-4-5", "claude-haiku-4-5-20251001"]
    assert margaret == PACKAGED_IDS


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"claude-x": ""}, "vertex_id must be a Vertex model id, or null"),
        ({"claude-x": {"display_name": "X"}}, "has no vertex_id"),
        ({"claude-x": {"vertex": "claude-x@1"}}, "unknown keys"),
    ],
)
def test_a_bad_model_table_stops_the_gateway_at_start(tmp_path: Path, table: dict[str, object], problem: str) -> None:
    settings = Settings(iap_audience=[AUDIENCE], models=table, audit_sink=f"sqlite:///{tmp_path}/a.db")

    with pytest.raises(ValueError, match=problem):
        anyio.run(Resources(settings).start)


def test_model_ids_map_to_vertex_names_and_back() -> None:
    table = ModelTable.load()

    assert table.to_vertex("claude-opus-5-5") == "claude-opus-5-5"  # today's models: the same id, no @date
    assert table.to_vertex("claude-sonnet-4-5") == "claude-sonnet-4-5@20250929"
    assert table.to_vertex("claude-opus-4-0") == "claude-opus-4@20250514"
    assert table.to_vertex("claude-haiku-4-5-20251001") == "claude-haiku-4-5@20251001"
    assert table.to_vertex("claude-sonnet-4-6-20260101") == "claude-sonnet-4-6@20260101"  # dated, not in the table
    assert table.to_vertex("claude-mythos-5") == "claude-mythos-5"  # not on Vertex: unchanged, Vertex says so
    assert table.to_vertex("claude-opus-4-5@20251101") == "claude-opus-4-5@20251101"  # already a Vertex name
    assert table.to_vertex("claude-future-5") == "claude-future-5"  # unknown: unchanged

    assert table.to_anthropic("claude-sonnet-4-5@20250929") == "claude-sonnet-4-5"
    assert table.to_anthropic("claude-opus-4@20250514") == "claude-opus-4-0"
    assert table.to_anthropic("claude-3-5-haiku@20241022") == "claude-3-5-haiku"  # the table lists it
    assert table.to_anthropic("claude-3-haiku@20240307") == "claude-3-haiku-20240307"  # not in the table
    assert table.to_anthropic("claude-future-5") == "claude-future-5"


def test_model_filter_takes_ids_and_patterns_case_blind() -> None:
    allowed = model_filter(["claude-sonnet-*", "Claude-Opus-4-5", "claude-haiku-4-?"])

    ids = ["claude-opus-4-5", "claude-haiku-4-5", "claude-haiku-4-55", "claude-sonnet-4-0", "claude-opus-4-1"]
    assert [m for m in ids if allowed(m)] == ["claude-opus-4-5", "claude-haiku-4-5", "claude-sonnet-4-0"]
    assert not model_filter([])("claude-opus-4-5")


def test_packaged_table_dates_only_the_vertex_ids_of_older_models() -> None:
    models = json.loads(PACKAGED_TABLE.read_text())["models"]

    assert models["claude-opus-4-1"]["vertex_id"] == "claude-opus-4-1@20250805"
    for model in ("claude-opus-5-5", "claude-sonnet-5-5", "claude-haiku-5-5", "claude-fable-5-2", "claude-opus-4-6"):
        assert models[model]["vertex_id"] == model
