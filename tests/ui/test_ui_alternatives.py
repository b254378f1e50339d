"""The Versions panel's handlers (app/ui/alternatives.py) as plain functions over the real store and embedder, with
the engine tests' scripted LM: versions of a step listed and picked, undo and redo of a pick from the Write tab,
Another version, a rewrite swapped back, pending versions, stale pages and bad input refused with a message."""

from __future__ import annotations

import gradio as gr
import pytest

from app.ui import alternatives as versions
from app.ui import library, write
from memory import alternatives, store
from tests.engine.engine_fakes import GOOD, PREMISE

FIRST = "Mara climbed the spiral stair with the note in her fist and did not look back at the sea below her."
SECOND = "Mara went down to the boathouse instead and lit a candle there for the dead of the island."


def _texts(services, novel_id) -> list[str]:
    with services.session() as s:
        return [p.text for p in store.paragraphs(s, novel_id)]


def _two_versions(services, scripted) -> int:
    novel_id = library.create_novel(PREMISE, "", "", "default")["novel_id"]
    list(write.start_story(novel_id))
    with services.session() as s, s.begin():
        store.update_novel_settings(s, novel_id, {"candidates": 2})
    scripted.script["paragraph"] = [FIRST, SECOND]
    scripted.script["memory"] = ["Mara climbed to the lamp.", "Mara lit a candle in the boathouse."]
    frames = list(write.next_step(novel_id, "Mara decides what to do with the note."))
    assert frames[-1]["status_md"] == "Saved."
    return novel_id


def test_two_versions_are_listed_and_the_second_is_picked_then_undone_and_redone(scripted, with_embedder):
    novel_id = _two_versions(with_embedder, scripted)
    panel = versions.refresh(novel_id)
    assert panel["versions_position"] == 2 and "1 other version kept" in panel["versions_summary_md"]
    choices = panel["versions_radio"]["choices"]
    assert [value for _, value in choices][0] == versions.IN_MANUSCRIPT and len(choices) == 2
    assert choices[1][0].startswith("Kept (another version of the step): Mara went down to the boathouse")
    second = choices[1][1]
    assert "boathouse" in versions.select_version(novel_id, panel["versions_read"], second)
    done = versions.use_version(novel_id, panel["versions_read"], second)
    assert "memory and plans follow it" in done["versions_status_md"] and done["versions_at"] == 2
    assert _texts(with_embedder, novel_id)[-1] == SECOND
    with with_embedder.session() as s:
        assert store.current_memory(s, novel_id).text == "Mara lit a candle in the boathouse."
    again = versions.show(novel_id, 2)
    assert again["versions_radio"]["choices"][1][0].startswith("Kept (was in the manuscript): Mara climbed")
    # The page read version 1 of the paragraph: picking from it again is refused and changes nothing.
    with pytest.raises(gr.Error, match="changed elsewhere"):
        versions.use_version(novel_id, panel["versions_read"], again["versions_radio"]["choices"][1][1])
    assert write.undo(novel_id).startswith("Undone")
    assert _texts(with_embedder, novel_id)[-1] == FIRST
    assert write.redo(novel_id) == "Redone."
    assert _texts(with_embedder, novel_id)[-1] == SECOND


def test_another_version_and_a_rewrite_swapped_back_to_the_original(scripted, with_embedder):
    novel_id = library.create_novel(PREMISE, "", "", "default")["novel_id"]
    list(write.start_story(novel_id))
    scripted.script["opening"] = [FIRST]
    frames = list(versions.another_version(novel_id))
    assert frames[-1]["versions_status_md"].startswith("Kept another version of paragraph 1")
    assert frames[-1]["versions_draft"] == FIRST and _texts(with_embedder, novel_id) == [GOOD["opening"]]
    panel = versions.refresh(novel_id)
    frames = list(versions.rewrite(novel_id, panel["versions_read"], "tenser"))
    assert frames[-1]["versions_status_md"] == "Rewrote paragraph 1; the original is kept beside it."
    assert _texts(with_embedder, novel_id) == [GOOD["rewrite"]]
    panel = versions.show(novel_id, 1)
    labels = [label for label, _ in panel["versions_radio"]["choices"]]
    assert labels[1].startswith("Kept (another version): Mara climbed")
    assert labels[2].startswith("Kept (was in the manuscript): Mara kept the lighthouse")
    original = panel["versions_radio"]["choices"][2][1]
    versions.use_version(novel_id, panel["versions_read"], original)
    assert _texts(with_embedder, novel_id) == [GOOD["opening"]]
    labels = [label for label, _ in versions.show(novel_id, 1)["versions_radio"]["choices"]]
    assert any(label.startswith("Kept (was in the manuscript): The note shook") for label in labels)


def test_pending_versions_are_applied_and_dropped(scripted, with_embedder):
    novel_id = library.create_novel(PREMISE, "", "", "default")["novel_id"]
    list(write.start_story(novel_id))

    def write_in_another_tab(call):
        with with_embedder.session() as s, s.begin():
            store.add_paragraph(s, novel_id, "Another tab wrote this meanwhile.")
        return FIRST

    scripted.script["paragraph"] = [write_in_another_tab]
    with pytest.raises(gr.Error, match="kept as a pending version"):
        list(write.next_step(novel_id, "Mara climbs the tower."))
    panel = versions.refresh(novel_id)
    assert panel["pending_radio"]["visible"] and panel["pending_buttons"]["visible"]
    ((label, value),) = panel["pending_radio"]["choices"]
    assert label.startswith("For position 2: Mara climbed")
    assert versions.apply_pending(novel_id, value)["versions_at"] == 2
    assert _texts(with_embedder, novel_id)[1] == FIRST
    assert write.undo(novel_id).startswith("Undone")
    versions.drop_pending(novel_id, versions.refresh(novel_id)["pending_radio"]["choices"][0][1])
    assert not versions.refresh(novel_id)["pending_radio"]["visible"]
    with pytest.raises(gr.Error, match="No kept version"):
        versions.apply_pending(novel_id, value)


def test_bad_input_gets_a_message(scripted, with_embedder):
    novel_id = _two_versions(with_embedder, scripted)
    panel = versions.refresh(novel_id)
    with pytest.raises(gr.Error, match="instruction is empty"):
        list(versions.rewrite(novel_id, panel["versions_read"], "  "))
    with pytest.raises(gr.Error, match="already"):
        versions.use_version(novel_id, panel["versions_read"], versions.IN_MANUSCRIPT)
    with pytest.raises(gr.Error, match="Choose a kept version"):
        versions.drop_version(novel_id, panel["versions_read"], None)
    with pytest.raises(gr.Error, match="No novel is open"):
        versions.use_version(None, None, None)
    # A version of another paragraph, from a page showing paragraph 1, is refused.
    first = versions.show(novel_id, 1)
    with pytest.raises(gr.Error, match="another paragraph"):
        versions.use_version(novel_id, first["versions_read"], panel["versions_radio"]["choices"][1][1])
    assert versions.show(novel_id, 99)["versions_position"] == 2
    dropped = versions.drop_version(novel_id, panel["versions_read"], panel["versions_radio"]["choices"][1][1])
    assert dropped["versions_status_md"].startswith("Dropped")
    with with_embedder.session() as s:
        assert alternatives.counts(s, novel_id) == {}
