"""A benchmark's finished units of work, appended to a JSON-lines file as each one ends, so that a run
of hours can stop at any point and the same command carries on where it stopped.

The first line records the settings that make results comparable (models, device, sizes); a run
with other settings refuses the file rather than mix measurements of different experiments.
"""
from __future__ import annotations

import json
from pathlib import Path


class JournalMismatch(ValueError):
    pass


class Journal:
    def __init__(self, path: str | Path | None, settings: dict):
        """`path` None keeps the journal in memory only (nothing to resume)."""
        self.path = Path(path) if path else None
        settings = json.loads(json.dumps(settings))  # as it reads back: tuples become lists
        self._done: dict[str, object] = {}
        if self.path and self.path.exists():
            text = self.path.read_text()
            if text and not text.endswith("\n"):
                # A kill cut the last line short; what is appended next starts on a line of its own.
                with self.path.open("a") as journal:
                    journal.write("\n")
            lines = text.splitlines()
            recorded = json.loads(lines[0])["settings"] if lines else settings
            if recorded != settings:
                changed = sorted(k for k in recorded.keys() | settings.keys() if recorded.get(k) != settings.get(k))
                raise JournalMismatch(f"{self.path} holds a run with other settings ({', '.join(changed)}); "
                                      "use another results folder or delete the file to start over")
            for line in lines[1:]:
                # A line cut short is the unit that was being written: it runs again.
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self._done[entry["key"]] = entry["value"]
        elif self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"settings": settings}) + "\n")

    def __len__(self) -> int:
        return len(self._done)

    def get(self, key: str):
        return self._done.get(key)

    def put(self, key: str, value) -> None:
        self._done[key] = value
        if self.path:
            with self.path.open("a") as journal:
                journal.write(json.dumps({"key": key, "value": value}, allow_nan=False) + "\n")
