"""The Library's trash, model servers named in settings, and novels whose stored settings are bad: each through the
handlers the UI calls, over a real SQLite store in a temp data dir."""

from __future__ import annotations

import html
import json
from dataclasses import replace

import gradio as gr
import pytest

from app.ui import library, services, settings, write
from app.wiring import open_parts
from memory import backup, exchange, store, trash
from tests.engine.engine_fakes import PREMISE


def _novel_with_history(ui_services) -> int:
    novel_id = library.create_novel("A ferry crosses at night.", "", "", "default")["novel_id"]
    with ui_services.session() as s, s.begin():
        store.add_paragraph(s, novel_id, "The ferry left at midnight.")
        store.add_paragraph(s, novel_id, "Ann counted the passengers twice.")
    with ui_services.session() as s, s.begin():
        paragraph = store.paragraphs(s, novel_id)[1]
        store.edit_paragraph(s, paragraph.id, "Ann counted the passengers three times.", paragraph.version)
    return novel_id


def _document(ui_services, novel_id) -> dict:
    with ui_services.session() as s:
        document = exchange.export_json(s, novel_id)
    document["novel"].pop("updated_at")
    return document


# ---------------------------------------------------------------- trash


def test_the_22_request_wipe_leaves_the_novel_restorable(ui_services):
    novel_id = _novel_with_history(ui_services)
    before = _document(ui_services, novel_id)
    calls = 1  # the create above
    library.delete_novel(novel_id, True)
    calls += 1
    for i in range(10):
        dummy = library.create_novel(f"Dummy premise {i}.", "", "", "default")["novel_id"]
        library.delete_novel(dummy, True)
        calls += 2
    assert calls == 22
    backups = backup.list_backups(ui_services.config.backups_dir)
    assert len(backups) == backup.DEFAULT_KEEP
    assert f"before-delete-novel-{novel_id}" not in {b.reason for b in backups}, \
        "the rotation has dropped every backup holding the novel: only the trash can bring it back"
    assert library.novel_rows() == []

    trash_update = library.refresh(None)["trash_dropdown"]
    labels = {label: name for label, name in trash_update["choices"]}
    assert len(labels) == 11
    [name] = [name for label, name in labels.items() if label.startswith(f"A_ferry_crosses_at_night (#{novel_id},")]
    restored = library.restore_from_trash(name)
    restored_id, message = restored["novel_id"], restored["status_md"]
    assert "Restored" in message and "A ferry crosses at night" in message
    assert _document(ui_services, restored_id) == before
    assert write.undo(restored_id).startswith("Undone")  # the history came back and works
    with ui_services.session() as s:
        assert [p.text for p in store.paragraphs(s, restored_id)] == ["The ferry left at midnight.",
                                                                     "Ann counted the passengers twice."]
    assert len(library.refresh(None)["trash_dropdown"]["choices"]) == 10


@pytest.mark.parametrize("confirmation", [False, None, "yes", 1])
def test_deleting_needs_the_ticked_box_itself(ui_services, confirmation):
    novel_id = _novel_with_history(ui_services)
    with pytest.raises(gr.Error, match="Tick .*Yes, delete it.* first"):
        library.delete_novel(novel_id, confirmation)
    assert [row[0] for row in library.novel_rows()] == [novel_id]
    assert trash.list_trash(ui_services.config.trash_dir) == []


def test_a_delete_whose_trash_write_fails_keeps_the_novel(ui_services):
    novel_id = _novel_with_history(ui_services)
    before = _document(ui_services, novel_id)
    ui_services.config.trash_dir.write_text("not a folder")
    with pytest.raises(gr.Error, match="nothing was deleted"):
        library.delete_novel(novel_id, True)
    assert _document(ui_services, novel_id) == before


def test_emptying_the_trash_needs_its_own_confirmation(ui_services):
    library.delete_novel(_novel_with_history(ui_services), True)
    with pytest.raises(gr.Error, match="Tick .*Yes, empty the trash.* first"):
        library.empty_trash("true")
    assert len(trash.list_trash(ui_services.config.trash_dir)) == 1
    emptied = library.empty_trash(True)
    confirmed, message = emptied["empty_trash_confirm"], emptied["status_md"]
    assert confirmed is False and "1 novel deleted for good" in message
    assert trash.list_trash(ui_services.config.trash_dir) == []
    with pytest.raises(gr.Error, match="trash is empty"):
        library.restore_from_trash(None)


# ---------------------------------------------------------------- model servers


def _relaunch(config, **changes) -> None:
    """The app started again over the same data dir with other launch options (`--allow-remote-host` ...)."""
    services.install(services.Services(open_parts(replace(config, **changes))))


def _save_model(novel_id, model: str):
    values, _ = settings.form_values(novel_id)
    return settings.save_settings(novel_id, None, {**values, "model": model})


def test_a_remote_server_is_refused_unless_named_at_launch(ui_services, ui_config):
    novel_id = library.create_novel(PREMISE, "", "", "default")["novel_id"]
    with pytest.raises(gr.Error, match=r"Refused the model server evil\.example: .*--allow-remote-host evil\.example"):
        _save_model(novel_id, "http://evil.example:8000/v1")
    assert settings.form_values(novel_id)[0]["model"] == "default"
    with pytest.raises(gr.Error, match="Refused the model server 10.0.0.5"):
        library.create_novel(PREMISE, "", "", "https://10.0.0.5/v1")
    with pytest.raises(gr.Error, match="Refused the model server"):
        _save_model(None, "http://evil.example/v1")  # nor as the settings new novels start with
    for loopback in ("http://127.0.0.1:8000/v1", "http://127.8.9.10/v1#m", "http://[::1]:8080/v1",
                     "http://localhost:11434/v1"):
        message = _save_model(novel_id, loopback)["status_md"]
        assert "saved" in message and settings.form_values(novel_id)[0]["model"] == loopback
    _relaunch(ui_config, allow_remote_host=("gpu.lan",))
    _save_model(novel_id, "http://GPU.lan:8000/v1#my-model")
    assert settings.form_values(novel_id)[0]["model"] == "http://GPU.lan:8000/v1#my-model"
    with pytest.raises(gr.Error, match="Refused the model server gpu.lan.evil.example"):
        _save_model(novel_id, "http://gpu.lan.evil.example/v1")


def test_a_stored_server_not_allowed_now_is_refused_at_step_time(scripted, ui_services):
    novel_id = library.create_novel(PREMISE, "", "", "default")["novel_id"]
    list(write.start_story(novel_id))
    calls = len(scripted.calls)
    with ui_services.session() as s, s.begin():  # written by an older version, or allowed at an earlier launch
        store.update_novel_settings(s, novel_id, {"model": "http://evil.example:8000/v1"})
    with pytest.raises(gr.Error, match="Refused the model server evil.example"):
        list(write.next_step(novel_id, "Mara lights the lamp anyway and waits."))
    assert len(scripted.calls) == calls, "nothing may be generated (or sent) for a refused server"
    with ui_services.session() as s:
        assert store.paragraph_count(s, novel_id) == 1
    assert "steps are refused" in write.refresh(novel_id)["receiver_md"]


def test_the_write_tab_shows_which_server_receives_the_text(ui_services, ui_config):
    novel_id = library.create_novel(PREMISE, "", "", "default")["novel_id"]
    assert write.refresh(novel_id)["receiver_md"] == "Text stays on this machine: model **SmolLM2\\-135M\\-Instruct**."
    _save_model(novel_id, "http://127.0.0.1:8000/v1#qwen")
    assert write.refresh(novel_id)["receiver_md"] == "Text is sent to **127.0.0.1:8000** (a server on this machine)."
    _relaunch(ui_config, allow_remote_host=("gpu.lan",))
    _save_model(novel_id, "https://user:secret@gpu.lan/v1")
    shown = write.refresh(novel_id)["receiver_md"]
    assert shown == "Text is sent to **gpu.lan** (a server on another machine)." and "secret" not in shown
    assert write.refresh(None)["receiver_md"] == ""


# ---------------------------------------------------------------- bad stored settings and imports


BAD = {"sampling": {"temperature": "hot"}, "context_tokens": 10**12}


def test_a_novel_with_bad_stored_settings_opens_and_writes_with_a_notice(scripted, ui_services):
    novel_id = library.create_novel(PREMISE, "", "", "default")["novel_id"]
    with ui_services.session() as s, s.begin():
        store.update_novel_settings(s, novel_id, BAD)
    opened = library.open_novel(novel_id)["status_md"]
    assert "saved settings had bad values" in opened and "temperature must be a number" in opened
    refreshed = settings.refresh(novel_id)
    notice = refreshed["status_md"]
    assert "temperature must be a number between 0 and 2, got 'hot' (the default 0.8 is used)" in notice
    assert "context_tokens (context budget)" in notice
    form, _ = settings.form_values(novel_id)
    assert (form["temperature"], form["context_tokens"]) == (0.8, 2048)
    frames = list(write.start_story(novel_id))
    assert frames[-1]["status_md"].startswith("Saved.") and "got 'hot'" in frames[-1]["status_md"]
    frames = list(write.next_step(novel_id, "Mara lights the lamp anyway and waits."))
    assert frames[-1]["status_md"].startswith("Saved.") and "got 'hot'" in frames[-1]["status_md"]
    with ui_services.session() as s:
        assert store.paragraph_count(s, novel_id) == 2
    # Saving the form stores the defaults it showed; the notice is gone.
    settings.save_settings(novel_id, form, form)
    assert settings.refresh(novel_id)["status_md"] == ""


@pytest.mark.parametrize("change, message", [
    (lambda d: d["novel"]["settings"].update(sampling={"temperature": "hot"}),
     "temperature must be a number between 0 and 2, got 'hot'"),
    (lambda d: d["novel"]["settings"].update(sampling={"temperature": -3}), "got -3"),
    (lambda d: d["novel"]["settings"].update(context_tokens=10**12), "context_tokens (context budget)"),
    (lambda d: d["novel"].update(title="  "), "novel.title is empty"),
])
def test_import_refuses_bad_settings_and_empty_titles(ui_services, tmp_path, change, message):
    novel_id = _novel_with_history(ui_services)
    path = library.export_novel(novel_id, "JSON (re-importable)")["export_file"]
    document = json.loads(open(path, encoding="utf-8").read())
    change(document)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(gr.Error) as info:
        library.import_novel(str(bad))
    assert message in html.unescape(info.value.message)
    assert [row[0] for row in library.novel_rows()] == [novel_id]
