"""A benchmark's finished units of work, appended to a JSON-lines file as each one ends, so that a run
of hours can stop at any point and the same command carries on where it stopped.

The first line records the settings that make results comparable (models, device, sizes); a run
with other settings refuses the file rather than mix measurements of different experiments. Every
unit's line carries the UTC time it was written.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path


class Journal:
    def __init__(self, path: str | Path, settings: dict):
        self.path = Path(path)
        settings = json.loads(json.dumps(settings))  # as it reads back: tuples become lists
        self.settings = settings
        self._done: dict[str, object] = {}
        self.times: list[str] = []  # the UTC times of the units' lines that carry one, in file order
        text = self.path.read_text() if self.path.exists() else ""
        if not text:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"settings": settings}) + "\n")
            return
        if not text.endswith("\n"):
            # A kill cut the last line short; what is appended next starts on a line of its own.
            with self.path.open("a") as journal:
                journal.write("\n")
        first, *units = text.splitlines()
        recorded = json.loads(first)["settings"]
        if recorded != settings:
            changed = sorted(k for k in recorded.keys() | settings.keys() if recorded.get(k) != settings.get(k))
            raise ValueError(f"{self.path} holds a run with other settings ({', '.join(changed)}); "
                             "use another results folder or delete the file to start over")
        for line in units:
            # A line cut short is the unit that was being written: it runs again.
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            self._done[entry["key"]] = entry["value"]
            if "time" in entry:
                self.times.append(entry["time"])

    def __len__(self) -> int:
        """How many units it holds."""
        return len(self._done)

    def get(self, key: str):
        return self._done.get(key)

    def put(self, key: str, value) -> None:
        self._done[key] = value
        with self.path.open("a") as journal:
            written = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
            journal.write(json.dumps({"key": key, "value": value, "time": written}, allow_nan=False) + "\n")
        self.times.append(written)
