"""Which parts of the page are redrawn after the open novel changes: the tab the change came from at once, every
other tab when the writer next opens it, and then only if the novel changed since that tab was drawn.

A tab's `Panel` keeps, in a `gr.State`, the novel's stamp (its id and last edit time, `novel_stamp`) as it was when
the tab was drawn; opening the tab compares it with the stamp now. Every store write and every undo or redo moves
the novel's `updated_at` (memory/revisions.py), so an edit made anywhere (another tab, another browser tab) shows.
Why not redraw every tab after each edit: at 300 paragraphs the Memory table, the Reader and the Library being
sent and drawn again took most of a one-second save (bench/manuscript_ui.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gradio as gr

from app.ui import services
from app.ui.common import handler, outputs, to_components
from memory import store
from memory.errors import NotFoundError

NO_NOVEL = "none"


def novel_stamp(novel_id) -> str:
    """What a drawn tab is checked against: the open novel's id and the time of its last change."""
    if novel_id in (None, ""):
        return NO_NOVEL
    with services.current().session() as session:
        try:
            novel = store.get_novel(session, int(novel_id))
        except NotFoundError:
            return f"{novel_id}@gone"
        return f"{novel.id}@{novel.updated_at.isoformat()}"


@dataclass
class Panel:
    """One tab's parts that are drawn together: each `(refresh, roles)` (a tab module's `refresh` handler and its
    components by role), and `drawn`, the state holding the stamp they were drawn at."""

    name: str
    refreshes: list[tuple[Callable, dict]]
    drawn: gr.State = field(default_factory=lambda: gr.State(None))

    @property
    def outputs(self) -> list:
        return [self.drawn] + [component for refresh, roles in self.refreshes for component in outputs(refresh, roles)]

    def values(self, novel_id) -> dict:
        """Every part drawn for the novel as it is now, and the stamp it was drawn at ({component: value})."""
        # The stamp is read first: an edit landing while the tab is read makes the tab stale, never wrongly fresh.
        found = {self.drawn: novel_stamp(novel_id)}
        for refresh, roles in self.refreshes:
            found.update(to_components(refresh(novel_id), roles))
        return found

    def draw_event(self, novel_state: gr.State) -> dict:
        """Draw it now, as an event's fn, inputs and outputs."""
        @handler
        def draw(novel_id) -> dict:
            return self.values(novel_id)

        draw.__name__ = f"draw_{self.name}"
        # Not queued: a read of the store, sent back as the answer to its request instead of a queue round trip
        # (the edit before it in the chain is queued, and that is what orders writes).
        return {"fn": draw, "inputs": [novel_state], "outputs": self.outputs, "queue": False}

    def when_stale_event(self, novel_state: gr.State) -> dict:
        """Draw it only if the novel changed since it was drawn (the tab's select event)."""
        @handler
        def draw_if_stale(novel_id, drawn) -> dict:
            if drawn is not None and drawn == novel_stamp(novel_id):
                # Gradio takes a dict as "these components only"; an empty one it refuses.
                return {self.drawn: drawn}
            return self.values(novel_id)

        draw_if_stale.__name__ = f"draw_{self.name}_if_stale"
        return {"fn": draw_if_stale, "inputs": [novel_state, self.drawn], "outputs": self.outputs, "queue": False}
