"""Prompt sets: a JSON list or JSON Lines of prompts, as strings or objects."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The AlpacaFarm prompts the paper evaluates on: in the repository, else in the shared folder beside it.
DEFAULT_PROMPTS = next(
    (path for path in (REPO / "data" / "alpaca_farm_100.json", REPO.parent / "shared" / "data" / "alpaca_farm_100.json")
     if path.exists()),
    REPO / "data" / "alpaca_farm_100.json",
)

_TEXT_KEYS = ("prompt", "instruction", "question", "text")


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str


def load_prompts(path: str | Path, limit: int | None = None, first: int = 0) -> list[Prompt]:
    """`limit` prompts of a file (all when None) from position `first` on: a set held out from the
    first ones starts later. Each item is a string or an object with `prompt`, `instruction` (with an
    optional `input`, AlpacaFarm's raw format), `question` or `text`. Ids are the item's position in
    the file, so they stay the same whatever `limit` and `first` are."""
    path = Path(path)
    raw = path.read_text()
    try:
        items = json.loads(raw)
    except json.JSONDecodeError:
        items = [json.loads(line) for line in raw.splitlines() if line.strip()]  # JSON Lines
    if isinstance(items, dict):
        items = items.get("prompts", [items])
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a list of prompts")
    prompts = [Prompt(str(position), _text(item, path, position)) for position, item in enumerate(items)]
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    if first >= len(prompts):
        raise ValueError(f"{path}: {len(prompts)} prompts, none from position {first} on")
    return prompts[first:first + limit] if limit else prompts[first:]


def _text(item, path: Path, position: int) -> str:
    if isinstance(item, str):
        text = item
    elif isinstance(item, dict):
        key = next((k for k in _TEXT_KEYS if isinstance(item.get(k), str)), None)
        if key is None:
            raise ValueError(f"{path}[{position}]: no field among {', '.join(_TEXT_KEYS)}")
        text = item[key]
        if key == "instruction" and str(item.get("input") or "").strip():
            text = f"{text}\n\n{item['input']}"
    else:
        raise ValueError(f"{path}[{position}]: a prompt must be a string or an object")
    if not text.strip():
        raise ValueError(f"{path}[{position}]: empty prompt")
    return text
