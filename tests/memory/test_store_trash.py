"""The trash: a deleted novel is kept as a full-history export that no backup rotation removes, restorable with its
text and undo history, private to the user, and emptied only when asked; a failed trash write deletes nothing."""

from __future__ import annotations

import stat

import numpy as np
import pytest

from memory import backup, exchange, revisions, store, trash
from memory.errors import StoreError
from memory.embeddings import Vector


def _novel(Session, title="Kept in the trash") -> int:
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, title, premise="A ferry crosses at night.", memory_text="m1").id
        store.add_paragraph(s, novel_id, "The ferry left at midnight.", embedding=Vector("e", np.ones(4)))
        store.add_paragraph(s, novel_id, "Ann counted the passengers twice.")
        store.add_lore(s, novel_id, "Ann", ["Ann"], "The ferrywoman.")
    with Session() as s, s.begin():
        paragraph = store.paragraphs(s, novel_id)[1]
        store.edit_paragraph(s, paragraph.id, "Ann counted the passengers three times.", paragraph.version)
    return novel_id


def _state(Session, novel_id) -> dict:
    with Session() as s:
        document = exchange.export_json(s, novel_id)
    document["novel"].pop("updated_at")
    return document


def test_delete_goes_to_the_trash_and_restores_with_text_and_history(database, tmp_path):
    engine, Session = database
    novel_id = _novel(Session)
    before = _state(Session, novel_id)
    item = trash.move_to_trash(Session, tmp_path / "trash", novel_id)
    with Session() as s:
        assert store.list_novels(s) == []
    assert [i.name for i in trash.list_trash(tmp_path / "trash")] == [item.name]
    assert item.novel_id == novel_id and item.title == "Kept_in_the_trash"
    restored_id, title = trash.restore_from_trash(Session, tmp_path / "trash", item.name)
    assert title == "Kept in the trash"
    assert _state(Session, restored_id) == before
    assert trash.list_trash(tmp_path / "trash") == []
    with Session() as s, s.begin():
        assert revisions.undo(s, restored_id) is not None  # the edit, undone from the restored history
    with Session() as s:
        assert store.paragraphs(s, restored_id)[1].text == "Ann counted the passengers twice."


def test_the_trash_is_private(database, tmp_path):
    _, Session = database
    item = trash.move_to_trash(Session, tmp_path / "trash", _novel(Session))
    assert stat.S_IMODE((tmp_path / "trash").stat().st_mode) == 0o700
    assert stat.S_IMODE(item.path.stat().st_mode) == 0o600


def test_backup_rotation_never_touches_the_trash(database, tmp_path):
    engine, Session = database
    novel_id = _novel(Session)
    _, first = backup.delete_novel_with_backup(engine, Session, tmp_path / "backups", novel_id,
                                               trash_dir=tmp_path / "trash", keep=2)
    for i in range(5):
        dummy = _novel(Session, f"Dummy {i}")
        backup.delete_novel_with_backup(engine, Session, tmp_path / "backups", dummy, trash_dir=tmp_path / "trash",
                                        keep=2)
    assert len(backup.list_backups(tmp_path / "backups")) == 2
    assert f"before-delete-novel-{novel_id}" not in {b.reason for b in backup.list_backups(tmp_path / "backups")}
    assert first.path.is_file() and len(trash.list_trash(tmp_path / "trash")) == 6


def test_a_failed_trash_write_deletes_nothing(database, tmp_path):
    _, Session = database
    novel_id = _novel(Session)
    blocked = tmp_path / "trash"
    blocked.write_text("a file where the trash folder should be")
    with pytest.raises(trash.TrashError, match="nothing was deleted") as info:
        trash.move_to_trash(Session, blocked, novel_id)
    assert "\n" not in str(info.value)
    with Session() as s:
        assert [n.id for n in store.list_novels(s)] == [novel_id]
        assert len(store.paragraphs(s, novel_id)) == 2


def test_a_failed_delete_leaves_no_stray_copy(database, tmp_path, monkeypatch):
    _, Session = database
    novel_id = _novel(Session)

    def refuse(session, novel_id):
        raise StoreError("the database refused the delete")

    monkeypatch.setattr(store, "delete_novel", refuse)
    with pytest.raises(StoreError, match="refused the delete"):
        trash.move_to_trash(Session, tmp_path / "trash", novel_id)
    assert trash.list_trash(tmp_path / "trash") == []
    with Session() as s:
        assert [n.id for n in store.list_novels(s)] == [novel_id]


def test_empty_only_on_request(database, tmp_path):
    _, Session = database
    first = trash.move_to_trash(Session, tmp_path / "trash", _novel(Session, "One"))
    second = trash.move_to_trash(Session, tmp_path / "trash", _novel(Session, "Two"))
    assert trash.find_in_trash(tmp_path / "trash", "latest") == second
    assert trash.empty_trash(tmp_path / "trash", first.name) == [first.path]
    assert [i.name for i in trash.list_trash(tmp_path / "trash")] == [second.name]
    assert trash.empty_trash(tmp_path / "trash") == [second.path]
    assert trash.list_trash(tmp_path / "trash") == []
    with pytest.raises(trash.TrashError, match="No 'nothing.json' in the trash"):
        trash.restore_from_trash(Session, tmp_path / "trash", "nothing.json")


def test_cli_trash_list_restore_empty(data_dir, capsys):
    from app.cli import main
    from memory.db import open_database

    flags = ["--data-dir", str(data_dir)]
    _, Session = open_database(f"sqlite:///{data_dir / 'longhand.db'}")
    novel_id = _novel(Session, "Gone by mistake")
    trash.move_to_trash(Session, data_dir / "trash", novel_id)
    assert main(["trash", *flags]) == 0
    listed = capsys.readouterr().out
    assert "Gone_by_mistake (novel 1, deleted" in listed
    assert main(["trash", "restore", *flags]) == 0
    assert "restored 'Gone by mistake' as novel" in capsys.readouterr().out
    with Session() as s:
        [summary] = store.list_novels(s)
        assert summary.title == "Gone by mistake" and summary.paragraphs == 2
    trash.move_to_trash(Session, data_dir / "trash", summary.id)
    assert main(["trash", "empty", *flags]) == 2
    assert "add --yes to confirm" in capsys.readouterr().err
    assert len(trash.list_trash(data_dir / "trash")) == 1
    assert main(["trash", "empty", "--yes", *flags]) == 0
    assert trash.list_trash(data_dir / "trash") == []
    assert main(["trash", "restore", "latest", *flags]) == 2
    err = capsys.readouterr().err
    assert "The trash is empty" in err and len(err.strip().splitlines()) == 1


def test_cli_import_refuses_bad_settings_and_an_empty_title(data_dir, capsys, tmp_path):
    import json

    from app.cli import main
    from memory.db import open_database

    flags = ["--data-dir", str(data_dir)]
    _, Session = open_database(f"sqlite:///{data_dir / 'longhand.db'}")
    novel_id = _novel(Session, "Exported")
    with Session() as s:
        document = exchange.export_json(s, novel_id)
    document["novel"]["settings"] = {"sampling": {"temperature": "hot"}}
    bad = tmp_path / "hot.json"
    bad.write_text(json.dumps(document), encoding="utf-8")
    assert main(["import", str(bad), *flags]) == 2
    err = capsys.readouterr().err
    assert "temperature must be a number between 0 and 2, got 'hot'" in err and len(err.strip().splitlines()) == 1
    document["novel"]["settings"] = {}
    good = tmp_path / "good.json"
    good.write_text(json.dumps(document), encoding="utf-8")
    assert main(["import", str(good), "--title", " ", *flags]) == 2
    assert "--title must not be empty" in capsys.readouterr().err
    with Session() as s:
        assert [n.id for n in store.list_novels(s)] == [novel_id]
    assert main(["import", str(good), *flags]) == 0
