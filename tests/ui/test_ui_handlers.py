"""Each tab's handlers called as plain functions over a real SQLite store (and the real MiniLM embedder)."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import gradio as gr
import pytest

from app.engine.continuity import MODE_VOICES
from app.ui import common, context, library, memory_tab, services, settings, story_chart, write
from app.wiring import open_parts
from memory import store
from tests.engine.engine_fakes import ScoringBackend, ScriptedGenerator


def _novel(ui_services, premise="A lighthouse keeper finds a message in a bottle.") -> int:
    return library.create_novel(premise, "gothic", "short sentences", "default")["novel_id"]


def _add_paragraphs(ui_services, novel_id, texts, embedder=None):
    with ui_services.session() as s, s.begin():
        for text in texts:
            store.add_paragraph(s, novel_id, text, embedding=embedder.passage(text) if embedder else None)


# ---------------------------------------------------------------- input checks


def test_clean_text_rejects_empty_huge_and_strips_control_characters():
    with pytest.raises(common.InputError, match="empty"):
        common.clean_text("   \n ", "The premise", required=True)
    with pytest.raises(common.InputError, match=r"too long \(1\.0 MB\)"):
        common.clean_text("x" * 1_000_000, "The premise", max_chars=common.MAX_PREMISE_CHARS)
    assert common.clean_text("a\x00b\x1bc\r\nd\te\x7f", "Text") == "abc\nd\te"


def test_handler_turns_exceptions_into_one_line_gr_errors():
    @common.handler
    def broken():
        raise KeyError("boom\nsecond line")

    @common.handler
    def broken_stream():
        yield 1
        raise RuntimeError("stream failed\ntraceback here")

    with pytest.raises(gr.Error) as caught:
        broken()
    assert "\n" not in caught.value.message and "boom" in caught.value.message
    stream = broken_stream()
    assert next(stream) == 1
    with pytest.raises(gr.Error) as caught:
        next(stream)
    assert "stream failed" in caught.value.message and "traceback" not in caught.value.message


def test_results_by_role_reach_their_components_and_an_undeclared_role_is_refused():
    @common.returns("draft_box", "status_md")
    def stream():
        yield {"draft_box": "The sea", "status_md": "Writing…"}
        yield {"status_md": "Saved."}

    @common.returns("status_md")
    def wrong():
        return {"draft_box": "not declared"}

    with gr.Blocks():
        tab = write.build()
    roles = common.components(tab)
    bound = common.bind(stream, roles)
    assert bound["outputs"] == [tab.draft_box, tab.status_md]
    assert list(bound["fn"]()) == [{tab.draft_box: "The sea", tab.status_md: "Writing…"}, {tab.status_md: "Saved."}]
    with pytest.raises(TypeError, match=r"wrong returned \['draft_box'\], which it does not declare"):
        wrong()
    # A role naming several components: the Settings tab's fields by name.
    with gr.Blocks():
        settings_tab = settings.build()
    filled = common.to_components(settings.reset_settings(), common.components(settings_tab))
    assert filled[settings_tab.fields["temperature"]] == 0.8
    assert set(filled) == set(settings_tab.fields.values())


# ---------------------------------------------------------------- library


def test_create_list_open_rename(ui_services):
    novel_id = _novel(ui_services)
    rows = library.novel_rows()
    assert [row[0] for row in rows] == [novel_id]
    assert rows[0][1].startswith("A lighthouse keeper")
    assert library.open_novel(novel_id)["novel_id"] == novel_id
    library.rename_novel(novel_id, "The Bottle")
    assert library.novel_rows()[0][1] == "The Bottle"
    with ui_services.session() as s:
        novel = store.get_novel(s, novel_id)
        assert novel.style_notes == "Genre: gothic\nshort sentences"
        assert novel.settings["model"] == "default"


@pytest.mark.parametrize("premise, message", [
    ("", "empty"),
    ("\x00\x01 \x02", "empty"),
    ("word " * 250_000, "too long"),
])
def test_create_checks_the_premise(ui_services, premise, message):
    with pytest.raises(gr.Error, match=message):
        library.create_novel(premise, "", "", "default")
    assert library.novel_rows() == []


def test_create_refuses_a_missing_model(ui_services, tmp_path):
    with pytest.raises(gr.Error, match="No model at"):
        library.create_novel("A premise.", "", "", str(tmp_path / "nothing-here"))


def test_open_a_deleted_novel_says_so(ui_services):
    with pytest.raises(gr.Error, match="No novel with id 99"):
        library.open_novel(99)


def test_delete_needs_confirmation_and_backs_up_first(ui_services):
    novel_id = _novel(ui_services)
    with pytest.raises(gr.Error, match="Tick"):
        library.delete_novel(novel_id, False)
    assert len(library.novel_rows()) == 1
    deleted = library.delete_novel(novel_id, True)
    closed, confirmed, message = deleted["novel_id"], deleted["delete_confirm"], deleted["status_md"]
    assert closed is None and confirmed is False and "trash" in message
    assert library.novel_rows() == []
    backups = list(ui_services.config.backups_dir.iterdir())
    assert backups, "a backup must exist before the delete"


def test_export_offers_a_copy_outside_the_data_dir(ui_services):
    novel_id = _novel(ui_services)
    _add_paragraphs(ui_services, novel_id, ["The sea was grey.", "She opened the bottle."])
    path = library.export_novel(novel_id, "Markdown")["export_file"]
    assert "She opened the bottle." in open(path, encoding="utf-8").read()
    data_dir = ui_services.config.data_dir.resolve()
    from pathlib import Path

    assert not Path(path).resolve().is_relative_to(data_dir)
    assert any(ui_services.config.exports_dir.iterdir())


def test_json_export_imports_back_as_a_new_novel(ui_services):
    novel_id = _novel(ui_services)
    _add_paragraphs(ui_services, novel_id, ["First.", "Second."])
    path = library.export_novel(novel_id, "JSON (re-importable)")["export_file"]
    imported = library.import_novel(path)
    new_id, message = imported["novel_id"], imported["status_md"]
    assert new_id != novel_id and "Imported" in message
    with ui_services.session() as s:
        assert [p.text for p in store.paragraphs(s, new_id)] == ["First.", "Second."]


def test_import_refuses_other_files(ui_services, tmp_path):
    bad = tmp_path / "notes.docx"
    bad.write_text("hello")
    with pytest.raises(gr.Error, match="cannot be imported"):
        library.import_novel(str(bad))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(gr.Error):
        library.import_novel(str(broken))
    assert library.novel_rows() == []


def test_markdown_manuscript_imports_as_paragraphs(ui_services, tmp_path):
    manuscript = tmp_path / "story.md"
    manuscript.write_text("# The Keeper\n\nThe sea was grey.\n\nShe opened\x07 the bottle.\n", encoding="utf-8")
    imported = library.import_novel(str(manuscript))
    novel_id, message = imported["novel_id"], imported["status_md"]
    assert "The Keeper" in message
    with ui_services.session() as s:
        assert [p.text for p in store.paragraphs(s, novel_id)] == ["The sea was grey.", "She opened the bottle."]


# ---------------------------------------------------------------- settings


def _form(novel_id) -> tuple[dict, dict]:
    """The settings form as the page reads it: the field values by name, and what the page keeps for the conflict
    check."""
    values, _ = settings.form_values(novel_id)
    return values, dict(values)


def _save(novel_id, values: dict, read: dict | None):
    return settings.save_settings(novel_id, read, dict(values))


def test_settings_round_trip_per_novel(ui_services):
    first, second = _novel(ui_services), _novel(ui_services, "Another premise.")
    values, read = _form(first)
    assert values["temperature"] == 0.8 and values["retrieval_top_k"] == 3
    values.update(temperature=0.3, repetition=1.15, penalty_range=64, dry_multiplier=0.8,
                  dry_sequence_breakers='["\\n", "."]', retrieval_top_k=5, max_new_tokens=40)
    _save(first, values, read)
    saved, _ = _form(first)
    assert saved["temperature"] == 0.3 and saved["penalty_range"] == 64 and saved["max_new_tokens"] == 40
    assert json.loads(saved["dry_sequence_breakers"]) == ["\n", "."]
    untouched, _ = _form(second)
    assert untouched["temperature"] == 0.8
    with ui_services.session() as s:
        stored = store.get_novel(s, first).settings
    assert stored["sampling"]["temperature"] == 0.3 and stored["penalties"]["range"] == 64


def test_a_stale_tab_cannot_overwrite_newer_settings(ui_services):
    novel_id = _novel(ui_services)
    tab_one, read_one = _form(novel_id)
    tab_two, read_two = _form(novel_id)
    tab_one["temperature"] = 0.4
    read_one = _save(novel_id, tab_one, read_one)["read"]
    tab_one["min_p"] = 0.1  # the saving tab carries on from what it saved
    _save(novel_id, tab_one, read_one)
    tab_two["repetition"] = 1.3
    with pytest.raises(gr.Error, match=r"changed elsewhere \(temperature, min p\)"):
        _save(novel_id, tab_two, read_two)
    saved, read_again = _form(novel_id)
    assert (saved["temperature"], saved["min_p"], saved["repetition"]) == (0.4, 0.1, tab_one["repetition"])
    # Once it has read the newer settings, the second tab's change goes through and keeps the first tab's.
    saved["repetition"] = 1.3
    _save(novel_id, saved, read_again)
    assert _form(novel_id)[0]["temperature"] == 0.4 and _form(novel_id)[0]["repetition"] == 1.3


def test_context_budget_and_snapshot_settings_reach_the_engine(ui_services):
    novel_id = _novel(ui_services)
    values, read = _form(novel_id)
    assert (values["context_tokens"], values["snapshot_dtype"]) == (2048, "fp32")
    values.update(context_tokens=1024, max_new_tokens=100, snapshot_budget_mb=50, snapshot_dtype="bf16")
    _save(novel_id, values, read)
    assert _form(novel_id)[0]["context_tokens"] == 1024
    engine = ui_services.engine()  # no model loaded: its window does not cap the budget
    view = engine._read(novel_id)
    assert engine._budget(view) == 1024 - 100  # the paragraph is written inside the budget
    policy = engine._snapshot_policy(view)
    assert (policy.budget_bytes, policy.dtype) == (50_000_000, "bf16")


def test_settings_saved_with_no_novel_open_seed_new_novels(ui_services):
    values, read = _form(None)
    values.update(max_new_tokens=32, temperature=0.5)
    message = _save(None, values, read)["status_md"]
    assert "new novels" in message
    assert _form(None)[0]["max_new_tokens"] == 32
    novel_id = _novel(ui_services)
    seeded, _ = _form(novel_id)
    assert seeded["max_new_tokens"] == 32 and seeded["temperature"] == 0.5


@pytest.mark.parametrize("field, value, message", [
    ("top_p", 0.0, "top_p"),
    ("repetition", 0.0, "repetition"),
    ("dry_sequence_breakers", "not json", "JSON list"),
    ("retrieval_top_k", 50, "top-k"),
    ("device", "tpu", "device"),
    ("context_tokens", 100, "context budget"),
    ("max_new_tokens", 3000, "larger than the paragraph length"),
    ("snapshot_dtype", "fp8", "snapshot precision"),
])
def test_settings_refuse_bad_values(ui_services, field, value, message):
    novel_id = _novel(ui_services)
    values, read = _form(novel_id)
    values[field] = value
    with pytest.raises(gr.Error, match=message):
        _save(novel_id, values, read)


# ---------------------------------------------------------------- memory


def test_memory_save_history_restore(ui_services):
    novel_id = _novel(ui_services)
    refreshed = memory_tab.refresh(novel_id)
    text, version = refreshed["memory_box"], refreshed["memory_version"]
    assert text == "" and version == 1
    saved = memory_tab.save_memory(novel_id, "Mara keeps the bottle hidden.", version)
    version, message = saved["memory_version"], saved["status_md"]
    assert version == 2 and "saved" in message
    version = memory_tab.save_memory(novel_id, "Mara threw the bottle back.", version)["memory_version"]
    assert memory_tab.show_memory_version(novel_id, 2) == "Mara keeps the bottle hidden."
    restored = memory_tab.restore_memory(novel_id, 2, version)
    text, version = restored["memory_box"], restored["memory_version"]
    assert text == "Mara keeps the bottle hidden." and version == 4
    assert memory_tab.refresh(novel_id)["memory_box"] == "Mara keeps the bottle hidden."


def test_stale_memory_edit_shows_the_conflict_and_keeps_the_other_tab_s_text(ui_services):
    novel_id = _novel(ui_services)
    version = memory_tab.refresh(novel_id)["memory_version"]
    memory_tab.save_memory(novel_id, "Saved in tab one.", version)
    with pytest.raises(gr.Error, match="changed elsewhere"):
        memory_tab.save_memory(novel_id, "Saved in tab two, from a stale page.", version)
    assert memory_tab.refresh(novel_id)["memory_box"] == "Saved in tab one."


def test_paragraph_table_edits_save_and_conflict(with_embedder):
    novel_id = _novel(with_embedder)
    _add_paragraphs(with_embedder, novel_id, ["The sea was grey.", "She opened the bottle."],
                    with_embedder.embedder())
    refreshed = memory_tab.refresh(novel_id)
    rows, versions = refreshed["paragraph_table"], refreshed["paragraph_versions"]
    stale_versions = [dict(item) for item in versions]
    rows[1][1] = "She broke the bottle on the rocks."
    saved = memory_tab.save_paragraph_edits(novel_id, rows, versions)
    new_rows, versions, message = saved["paragraph_table"], saved["paragraph_versions"], saved["status_md"]
    assert "Saved paragraph 2" in message
    assert new_rows[1][1] == "She broke the bottle on the rocks."
    found = memory_tab.search_memory(novel_id, "broken glass on rocks", 1)
    assert found[0][0] == 2 and 0 < found[0][1] <= 1
    rows[1][1] = "A stale tab's version."
    with pytest.raises(gr.Error, match="changed elsewhere"):
        memory_tab.save_paragraph_edits(novel_id, rows, stale_versions)
    with with_embedder.session() as s:
        assert store.paragraphs(s, novel_id)[1].text == "She broke the bottle on the rocks."


def test_search_ranks_the_relevant_paragraph_first(with_embedder):
    novel_id = _novel(with_embedder)
    texts = ["The lighthouse lamp needed oil.", "A storm tore the nets of the fishermen.",
             "Mara's grandmother baked bread every morning."]
    _add_paragraphs(with_embedder, novel_id, texts, with_embedder.embedder())
    rows = memory_tab.search_memory(novel_id, "baking bread in the kitchen", 3)
    assert rows[0][0] == 3
    assert rows[0][1] > rows[1][1] >= rows[2][1]
    assert rows[0][2].startswith("vector rank 1 (sentence match")
    # The matching sentence is shown in bold inside the paragraph.
    assert rows[0][3] == "Mara's grandmother baked bread every morning.".join(["**", "**"])


def test_search_highlights_the_matching_sentence_and_finds_rare_names(with_embedder):
    novel_id = _novel(with_embedder)
    texts = ["The lamp needed oil. Mara climbed the stairs. Gulls called outside.",
             "Rain on the roof. A letter from *Brick* lay on the table, unopened. The kettle sang."]
    _add_paragraphs(with_embedder, novel_id, texts, with_embedder.embedder())
    rows = memory_tab.search_memory(novel_id, "a message that nobody had read", 1)
    assert rows[0][0] == 2
    assert rows[0][3] == "Rain on the roof. **A letter from \\*Brick\\* lay on the table, unopened.** The kettle sang."
    assert "lexical rank 1" in memory_tab.search_memory(novel_id, "What did Brick send?", 1)[0][2]


def test_story_bible_add_edit_remove(ui_services):
    novel_id = _novel(ui_services)
    saved = memory_tab.save_lore(novel_id, 0, "Mara", "Mara, keeper", "The keeper.", False, 0)
    rows, message = saved["lore_table"], saved["status_md"]
    entry_id = saved["lore_pick"]["value"]
    assert rows[0][1] == "Mara" and rows[0][2] == "Mara, keeper" and "Added" in message
    assert memory_tab.pick_lore(novel_id, entry_id) == {"lore_name": "Mara", "lore_keys": "Mara, keeper",
                                                         "lore_body": "The keeper.", "lore_always_on": False,
                                                         "lore_version": 1}
    saved = memory_tab.save_lore(novel_id, entry_id, "Mara", "Mara", "The keeper, 40.", True, 1)
    rows, version = saved["lore_table"], saved["lore_version"]
    assert version == 2 and rows[0][3] == "yes" and rows[0][4] == "The keeper, 40."
    with pytest.raises(gr.Error, match="changed elsewhere"):
        memory_tab.save_lore(novel_id, entry_id, "Mara", "Mara", "stale", True, 1)
    with pytest.raises(gr.Error, match="key"):
        memory_tab.save_lore(novel_id, 0, "Nobody", "", "No keys, not always on.", False, 0)
    rows = memory_tab.remove_lore(novel_id, entry_id)["lore_table"]
    assert rows == []


# ---------------------------------------------------------------- write (store side) and chart


def test_write_refresh_numbers_and_escapes_the_manuscript(ui_services):
    novel_id = _novel(ui_services)
    _add_paragraphs(ui_services, novel_id, ["The sea was grey.", "<script>alert(1)</script> & more"])
    with ui_services.session() as s, s.begin():
        store.set_plans(s, novel_id, ["She reads it.", "She burns it.", "She hides it."])
    refreshed = write.refresh(novel_id)
    manuscript, radio = refreshed["manuscript_html"], refreshed["plan_radio"]
    instruction, counts = write.first_plan(refreshed["plans_shown"]), refreshed["counts_md"]
    assert "data-position='2'" in manuscript and "<script>" not in manuscript and "&lt;script&gt;" in manuscript
    assert [choice[0] for choice in radio["choices"]] == ["She reads it.", "She burns it.", "She hides it."]
    assert instruction == "She reads it."
    assert counts.startswith("2 paragraphs · 7 words")
    assert write.choose_plan("She burns it.") == "She burns it."


def test_undo_redo_through_the_write_tab(ui_services):
    novel_id = _novel(ui_services)
    _add_paragraphs(ui_services, novel_id, ["One.", "Two."])
    assert "Undone" in write.undo(novel_id)
    with ui_services.session() as s:
        assert [p.text for p in store.paragraphs(s, novel_id)] == ["One."]
    assert write.redo(novel_id) == "Redone."
    with ui_services.session() as s:
        assert [p.text for p in store.paragraphs(s, novel_id)] == ["One.", "Two."]


def test_stop_without_a_generation_says_so(ui_services):
    novel_id = _novel(ui_services)
    assert write.stop(novel_id) == "Nothing is running."
    event = ui_services.cancel_event(f"novel-{novel_id}")
    assert write.stop(novel_id).startswith("Stopping")
    assert event.is_set()


def test_repetition_score_catches_a_loop():
    paragraphs = ["The keeper climbed the stairs to light the lamp.",
                  "Outside, the gulls screamed over a restless sea.",
                  "The keeper climbed the stairs to light the lamp."]
    scores = story_chart.repetition_scores(paragraphs)
    assert scores[0] == 0.0 and scores[1] == 0.0 and scores[2] == 1.0
    words, repetition = story_chart.chart_frames(paragraphs)
    assert list(words["words"]) == [9, 8, 9] and list(repetition["paragraph"]) == ["1", "2", "3"]


def test_chart_refresh_for_a_novel(ui_services):
    novel_id = _novel(ui_services)
    _add_paragraphs(ui_services, novel_id, ["a b c d", "a b c d"])
    refreshed = story_chart.refresh(novel_id)
    repetition, summary = refreshed["repetition_plot"], refreshed["chart_summary_md"]
    assert repetition.value["data"] == [["1", 0.0], ["2", 1.0]]
    assert repetition.sort == ["1", "2"]
    assert summary.startswith("2 paragraphs, 8 words; 1 paragraph(s)")


def test_continuity_per_paragraph_shows_where_the_thread_and_the_voice_broke():
    paragraphs = ["Mara kept the lighthouse on Skerry alone. She walked the shore every morning.",
                  "Mara climbed to the lamp room on Skerry and read the note again.",
                  "In 2017, a woman named Julia opened a bakery in Paris.",
                  "I walked to Julia's bakery and my hands were cold."]
    assert story_chart.carried_names(paragraphs) == [0, 2, 0, 1]
    assert story_chart.carried_names([]) == [] and story_chart.continuity_summary([], MODE_VOICES["write"]) == ""
    carry, in_voice = story_chart.continuity_frames(paragraphs, MODE_VOICES["write"])
    assert list(carry["names carried over"]) == [0, 2, 0, 1]
    assert list(in_voice["in voice"]) == [1, 1, 1, 0]
    summary = story_chart.continuity_summary(paragraphs, MODE_VOICES["write"])
    assert "Paragraph(s) 3 name no one and nowhere of the paragraph before." in summary
    assert "paragraph(s) 4 (in the first person, not the third)" in summary


def test_chart_refresh_shows_continuity(ui_services):
    novel_id = _novel(ui_services)
    _add_paragraphs(ui_services, novel_id, ["Mara walked to Skerry at dawn.", "Tomas waited in Paris for a letter."])
    refreshed = story_chart.refresh(novel_id)
    assert refreshed["carry_plot"].value["data"] == [["1", 0], ["2", 0]]
    assert refreshed["voice_plot"].value["data"] == [["1", 1], ["2", 1]]
    assert "Paragraph(s) 2 name no one" in refreshed["chart_summary_md"]


def test_launch_options_are_private_by_default(ui_config):
    from app.ui import launch_options

    options = launch_options(ui_config)
    assert options["server_name"] == "127.0.0.1" and options["share"] is False and options["auth"] is None
    assert options["enable_monitoring"] is False and options["max_file_size"] == "10mb"
    # Everything in the data dir is blocked except Gradio's own upload folder (tests/ui/test_security_local.py).
    data_dir = str(ui_config.data_dir.resolve())
    assert str(ui_config.data_dir.resolve() / "longhand.db") in options["blocked_paths"]
    assert all(path.startswith(data_dir + "/") for path in options["blocked_paths"])
    assert options["allowed_paths"] == []
    assert options["run_history"] is False and options["mcp_server"] is False
    from dataclasses import replace

    assert launch_options(replace(ui_config, auth="ann:secret"))["auth"] == ("ann", "secret")


def test_the_app_builds_with_every_tab(ui_services):
    import gradio as gr

    from app.ui import build_app

    demo = build_app(ui_services.config, ui_services.source, installed=ui_services)
    labels = {block.label for block in demo.blocks.values() if isinstance(block, gr.Tab)}
    assert labels == {"Library", "Write", "Memory", "Context", "Settings", "Reader", "Story chart"}
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"plan_radio", "next_step_btn", "stop_btn", "memory_box", "context_box", "create_btn"} <= ids


def test_search_says_the_rerank_is_off_by_default(with_embedder):
    novel_id = _novel(with_embedder)
    _add_paragraphs(with_embedder, novel_id, ["Mara hid the brass key in the blue teapot."], with_embedder.embedder())
    generator = ScriptedGenerator()
    generator.backend = ScoringBackend()
    with_embedder.use_generator(generator)
    rows = memory_tab.search_memory(novel_id, "Where is the brass key?", 2)
    assert rows[-1][2].startswith("LM rerank skipped: off (--lm-rerank 1") and not generator.backend.scored


def test_search_says_the_lm_rank_or_that_the_rerank_was_skipped(ui_config, embedder):
    installed = services.Services(open_parts(replace(ui_config, lm_rerank=True)))  # the UI fixture's, rerank on
    services.install(installed)
    installed.use_embedder(embedder)
    novel_id = _novel(installed)
    texts = ["The lamp needed oil. Mara climbed the stairs.", "Mara hid the brass key in the blue teapot."]
    _add_paragraphs(installed, novel_id, texts, installed.embedder())
    rows = memory_tab.search_memory(novel_id, "Where is the brass key?", 2)
    assert rows[-1][2] == "LM rerank skipped: no language model is loaded."
    assert all("LM rerank rank" not in row[2] for row in rows)
    generator = ScriptedGenerator()
    generator.backend = ScoringBackend()
    installed.use_generator(generator)
    rows = memory_tab.search_memory(novel_id, "Where is the brass key?", 2)
    assert len(rows) == 2 and rows[0][0] == 2 and "LM rerank rank 1" in rows[0][2]


def test_context_tab_shows_why_the_rerank_was_skipped():
    preview = SimpleNamespace(retrieved=[], retrieval_notice="LM rerank skipped: turned off.")
    assert context._why_retrieved(preview) == "No earlier passages retrieved.\n\nLM rerank skipped: turned off."
