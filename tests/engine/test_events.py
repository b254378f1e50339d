"""Events and the one status line each means (app.engine.events), as the Write tab, the CLI and the benchmarks
read them, on a real step of the scripted LM."""

from __future__ import annotations

import pytest

from app.engine import Engine
from app.engine.events import EVENT_KINDS, Event, StepProgress, status_line
from tests.engine.engine_fakes import GOOD, ScriptedGenerator


def test_an_unknown_kind_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown event kind 'tokens'"):
        Event("tokens", "x")
    assert EVENT_KINDS == {"progress", "token", "reset", "paragraph", "memory", "plans", "notice", "done"}


def test_status_lines_say_progress_retries_notices_and_the_save_and_nothing_for_data():
    assert status_line(Event("progress", "Writing the paragraph…")) == "Writing the paragraph…"
    assert status_line(Event("reset", "Retrying the paragraph (it was empty).")) == \
        "Retrying the paragraph (it was empty)."
    assert status_line(Event("notice", "Paragraph repaired.")) == "note: Paragraph repaired."
    assert status_line(Event("done", "Saved paragraph 2.")) == "Saved paragraph 2."
    for kind in ("token", "paragraph", "memory", "plans"):
        assert status_line(Event(kind, "data only")) is None


def test_progress_streams_the_draft_empties_it_on_a_reset_and_ends_on_the_saved_paragraph():
    progress = StepProgress(status="Starting…")
    for event in [Event("progress", "Writing the paragraph…"), Event("token", "The"), Event("token", " sea")]:
        progress.add(event)
    assert (progress.draft, progress.status) == ("The sea", "Writing the paragraph…")
    progress.add(Event("reset", "Retrying the paragraph (too short)."))
    assert (progress.draft, progress.status) == ("", "Retrying the paragraph (too short).")
    progress.add(Event("token", "Grey"))
    progress.add(Event("paragraph", "Grey water."))
    progress.add(Event("notice", "Paragraph repaired."))
    assert (progress.draft, progress.notices) == ("Grey water.", ["Paragraph repaired."])
    assert progress.status == "note: Paragraph repaired."


def test_a_real_step_folds_into_the_saved_paragraph(session_factory, embedder, novel_id):
    engine = Engine(session_factory, ScriptedGenerator(), embedder)
    progress = StepProgress()
    lines = []
    for event in engine.start(novel_id):
        progress.add(event)
        line = status_line(event)
        if line is not None:
            lines.append(line)
    assert progress.draft == GOOD["opening"]
    assert lines[0] == "Proposing a title and an outline…" and lines[-1] == "Saved paragraph 1."
    assert "Writing the opening…" in lines
