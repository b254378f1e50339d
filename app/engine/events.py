"""What a running step reports and how it is told: `Event` (its `kind` one of `EventKind`), `status_line` (the one
line an event means, for the Write tab, `python -m app write` and the benchmarks alike) and `StepProgress` (the
streamed paragraph, the status line and the notices so far, folded from a step's events)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from app.engine.core import StepOutcome

# progress (text: a status line; done/total in auto mode), token (text: a piece of the paragraph, streamed),
# reset (the paragraph so far is discarded before a retry), paragraph (text: the final paragraph), memory (text),
# plans (plans), notice (text: a fallback or repair the writer should know about), done (outcome: the committed
# StepOutcome; text: which paragraph was saved).
EventKind = Literal["progress", "token", "reset", "paragraph", "memory", "plans", "notice", "done"]
EVENT_KINDS: frozenset[str] = frozenset(get_args(EventKind))


@dataclass
class Event:
    """One thing a running step reports (see `EventKind` for what each kind carries)."""

    kind: EventKind
    text: str = ""
    done: int = 0
    total: int = 0
    plans: list[str] = field(default_factory=list)
    outcome: StepOutcome | None = None

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}: one of {', '.join(sorted(EVENT_KINDS))}")


def status_line(event: Event) -> str | None:
    """The line the writer reads when `event` arrives; None for an event that only carries data (a token, the
    paragraph, the memory, the plans)."""
    if event.kind in ("progress", "reset", "done"):
        return event.text
    if event.kind == "notice":
        return f"note: {event.text}"
    return None


@dataclass
class StepProgress:
    """What a running step has shown so far: the paragraph as it streams (the final text once written; a reset
    empties it), the latest status line, and every notice."""

    draft: str = ""
    status: str = ""
    notices: list[str] = field(default_factory=list)

    def add(self, event: Event) -> None:
        if event.kind == "token":
            self.draft += event.text
        elif event.kind == "reset":
            self.draft = ""
        elif event.kind == "paragraph":
            self.draft = event.text
        elif event.kind == "notice":
            self.notices.append(event.text)
        line = status_line(event)
        if line is not None:
            self.status = line
