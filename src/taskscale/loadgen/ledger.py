"""The drill's acknowledged writes: what each writer user was told the server stored.

``LEDGER`` lives in the Locust process of the writer users (``drill_writer.py``) and goes into
the worker's dump next to its histograms (``locust_plugin``); taskscale merges the dumps and,
after the drill, reads every task back from the current primary (RPO).

A task maps to the digests of what it may hold: the content the last acknowledged write
returned first, then the content of later writes that got no definite answer (a PATCH whose
connection broke: it may have committed). A row matching none of them lost an acknowledged
write. Stdlib only: this module is shipped into Locust pods like ``metrics``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any


def digest(title: str, description: str | None, status: str) -> str:
    """A short hash of a task's content, the same wherever it is computed."""
    text = "\x1f".join((title, description if description is not None else "\x00", status))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


class Ledger:
    def __init__(self) -> None:
        self.tasks: dict[int, list[str]] = {}
        self.acknowledged = 0  # acknowledged writes: creates and updates

    def __bool__(self) -> bool:
        return bool(self.tasks)

    def acked(self, task_id: int, content: str) -> None:
        """A write the server acknowledged: the task now holds ``content``."""
        self.tasks[task_id] = [content]
        self.acknowledged += 1

    def uncertain(self, task_id: int, content: str) -> None:
        """A write to a known task with no definite answer: it may hold ``content`` too."""
        known = self.tasks.get(task_id)
        if known is not None and content not in known:
            known.append(content)

    def dump(self) -> dict[str, Any]:
        return {
            "acknowledged": self.acknowledged,
            "tasks": {str(k): v for k, v in self.tasks.items()},
        }

    def merge(self, data: dict[str, Any]) -> None:
        self.acknowledged += int(data.get("acknowledged", 0))
        for key, contents in dict(data.get("tasks", {})).items():
            self.tasks[int(key)] = [str(c) for c in contents]

    @classmethod
    def from_dumps(cls, dumps: Iterable[dict[str, Any]]) -> Ledger:
        ledger = cls()
        for data in dumps:
            ledger.merge(data)
        return ledger


LEDGER = Ledger()
