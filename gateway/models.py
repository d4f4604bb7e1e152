"""The configured model table: Anthropic ids, their Vertex AI names, and the `GET /v1/models` listing."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson

from gateway.globs import compile_glob

PACKAGED = "gateway/data/models.json (packaged default)"

_DATED = re.compile(r"^(?P<base>.+)-(?P<date>\d{8})$")
_VERTEX_DATE = re.compile(r"@(?P<date>\d{8})$")
_EPOCH = "1970-01-01T00:00:00Z"


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model the gateway offers."""

    id: str
    vertex_id: str | None  # None: not offered on Vertex AI
    display_name: str
    created_at: str

    def listing(self) -> dict[str, str]:
        """The entry in Anthropic's `GET /v1/models` form."""
        return {"type": "model", "id": self.id, "display_name": self.display_name, "created_at": self.created_at}


class ModelTable:
    """Anthropic ids to Vertex AI publisher model names and back, and the list callers may pick from."""

    def __init__(self, entries: Iterable[ModelEntry], *, source: str = "") -> None:
        self.source = source
        # In the table's own order: newest model first, as Anthropic lists them (undated ids carry no date to sort).
        self.entries = list(entries)
        self._to_vertex = {e.id: e.vertex_id for e in self.entries if e.vertex_id is not None}
        self._to_anthropic: dict[str, str] = {}
        for entry in self.entries:
            if entry.vertex_id is not None:
                self._to_anthropic.setdefault(entry.vertex_id, entry.id)

    @property
    def ids(self) -> list[str]:
        return [entry.id for entry in self.entries]

    def to_vertex(self, model: str) -> str:
        """The Vertex name: from the table, else `name-YYYYMMDD` as `name@YYYYMMDD`, else unchanged."""
        if model in self._to_vertex:
            return self._to_vertex[model]
        if "@" not in model and (dated := _DATED.match(model)):
            return f"{dated['base']}@{dated['date']}"
        return model

    def to_anthropic(self, model: str) -> str:
        """The Anthropic id for a Vertex name: from the table, else `name@YYYYMMDD` as `name-YYYYMMDD`."""
        if model in self._to_anthropic:
            return self._to_anthropic[model]
        return model.replace("@", "-", 1)

    def listing(self, allowed: Callable[[str], bool] | None = None) -> dict[str, Any]:
        """`GET /v1/models` in Anthropic's list form, limited to the ids `allowed` accepts."""
        data = [entry.listing() for entry in self.entries if allowed is None or allowed(entry.id)]
        return {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    @classmethod
    def load(cls, table: Mapping[str, Any] | None = None) -> ModelTable:
        """The table given (the `GATEWAY_MODELS` setting), or the packaged default; a bad entry raises ValueError."""
        if table is not None:
            return cls(_entries(table, "GATEWAY_MODELS"), source="GATEWAY_MODELS")
        text = resources.files("gateway").joinpath("data").joinpath("models.json").read_text("utf-8")
        data = json.loads(text)
        return cls(_entries(data["models"], PACKAGED), source=PACKAGED)


def model_filter(allowed: Iterable[object]) -> Callable[[str], bool]:
    """A test for model ids from an allow-list of ids or patterns (`*` any run, `?` one character), case-blind,
    as the policy file writes them; items are read with `str()`, so pattern objects work too."""
    regexes = [compile_glob(str(item)) for item in allowed]
    return lambda model: any(r.fullmatch(model.lower()) for r in regexes)


def _entries(table: Mapping[str, Any], origin: str) -> list[ModelEntry]:
    if not isinstance(table, Mapping):
        raise ValueError(f"{origin}: expected a JSON object of Anthropic model id to Vertex model id")
    packaged = _packaged_names() if origin != PACKAGED else {}
    entries = []
    for model, value in table.items():
        if isinstance(value, str):
            value = {"vertex_id": value}
        if not isinstance(model, str) or not model or not isinstance(value, Mapping):
            raise ValueError(f"{origin}: entry {model!r} must map an id to a Vertex id or an object")
        unknown = set(value) - {"vertex_id", "display_name", "created_at"}
        if unknown:
            raise ValueError(f"{origin}: entry {model!r} has unknown keys {sorted(unknown)}")
        if "vertex_id" not in value:
            raise ValueError(f"{origin}: entry {model!r} has no vertex_id (null if it is not on Vertex AI)")
        vertex_id = value["vertex_id"]
        if vertex_id is not None and (not isinstance(vertex_id, str) or not vertex_id):
            raise ValueError(f"{origin}: entry {model!r}: vertex_id must be a Vertex model id, or null")
        display_name = value.get("display_name") or packaged.get(model) or model
        created_at = value.get("created_at") or _created_at(vertex_id, model)
        if not isinstance(display_name, str) or not isinstance(created_at, str):
            raise ValueError(f"{origin}: entry {model!r}: display_name and created_at must be strings")
        entries.append(ModelEntry(model, vertex_id, display_name, created_at))
    return entries


def _created_at(vertex_id: str | None, model: str) -> str:
    """The release date carried in the model's name (`@20250929`, `-20250929`), as Anthropic formats it."""
    found = (vertex_id and _VERTEX_DATE.search(vertex_id)) or _DATED.match(model)
    if not found:
        return _EPOCH
    date = found["date"]
    return f"{date[:4]}-{date[4:6]}-{date[6:]}T00:00:00Z"


def _packaged_names() -> dict[str, str]:
    text = resources.files("gateway").joinpath("data").joinpath("models.json").read_text("utf-8")
    return {model: value.get("display_name", model) for model, value in json.loads(text)["models"].items()}


async def models_listing(table: ModelTable, policy: object, principal: object) -> bytes:
    """`GET /v1/models` for one caller: the table, limited by the policy's `allowed_models(principal)` when the
    policy has that method (sync or async; None means no limit, else ids or patterns)."""
    allowed_models = getattr(policy, "allowed_models", None)
    allowed = allowed_models(principal) if callable(allowed_models) else None
    if inspect.isawaitable(allowed):
        allowed = await allowed
    listing = table.listing(None if allowed is None else model_filter(allowed))
    return orjson.dumps(listing)
