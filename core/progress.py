"""One shape for every progress report: `done` of `total` units of a named `stage`.

Loading the default model, computing a TSP order, evaluating, generating a study's texts, the key
holder's key upload and the worker's forward pass all report a `Progress` to an `OnProgress` callback;
terminals draw a bar from it, the page a line, the wire a message. `total` 0 makes it a one-off note.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """`done` of `total` units of `stage` (total 0: a note with no count); `note` says more in words."""

    stage: str
    done: int = 0
    total: int = 0
    note: str = ""

    def line(self) -> str:
        """The report as one line: "stage 3/10: note", or "stage: note" for a note."""
        count = f" {self.done}/{self.total}" if self.total else ""
        tail = f": {self.note}" if self.note else ""
        return f"{self.stage}{count}{tail}"


OnProgress = Callable[[Progress], None]
