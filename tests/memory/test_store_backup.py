"""Backups: consistent integrity-checked copies, keep-last-N, restore (with a safety backup first), backups before a
migration and before deleting a novel, and the `python -m app backup/restore/export/import` commands."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from app.cli import main
from memory import backup, store, trash
from memory.db import init_db, make_engine, make_sessionmaker, open_database
from memory.migrations import current_revision, head_revision, upgrade


def paragraph_texts(Session, novel_id: int) -> list[str]:
    with Session() as s:
        return [p.text for p in store.paragraphs(s, novel_id)]


def test_backup_is_a_checked_consistent_copy_and_restore_brings_it_back(database, tmp_path):
    engine, Session = database
    backups = tmp_path / "backups"
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Kept").id
        store.add_paragraph(s, novel_id, "before the backup")
    saved = backup.backup(engine, backups, reason="manual")
    if engine.dialect.name == "sqlite":
        assert backup.integrity_check(saved) == "ok"
        with sqlite3.connect(saved) as copy:
            assert copy.execute("SELECT text FROM paragraphs").fetchall() == [("before the backup",)]
    with Session() as s, s.begin():
        store.add_paragraph(s, novel_id, "after the backup")
        store.create_novel(s, "Later novel")
    safety = backup.restore(engine, saved, backups)
    Session = make_sessionmaker(engine)
    with Session() as s:
        assert [n.title for n in store.list_novels(s)] == ["Kept"]
        novel_id = store.list_novels(s)[0].id
    assert paragraph_texts(Session, novel_id) == ["before the backup"]
    # The state the restore replaced is itself in a backup, and restoring that brings it back.
    assert safety is not None and safety.exists()
    backup.restore(engine, safety, backups)
    with Session() as s:
        assert sorted(n.title for n in store.list_novels(s)) == ["Kept", "Later novel"]


def test_keep_last_n(sqlite_url, tmp_path):
    engine, _ = open_database(sqlite_url)
    made = [backup.backup(engine, tmp_path / "b", reason=f"n{i}", keep=3) for i in range(5)]
    kept = backup.list_backups(tmp_path / "b")
    assert [b.path for b in kept] == list(reversed(made[-3:]))
    assert kept[0].reason == "n4"


def test_damaged_backup_is_refused_and_nothing_changes(sqlite_url, tmp_path):
    engine, Session = open_database(sqlite_url)
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Safe").id
        store.add_paragraph(s, novel_id, "still here")
    good = backup.backup(engine, tmp_path / "b")
    damaged = tmp_path / "b" / "longhand-20200101T000000000000-damaged.db"
    data = bytearray(good.read_bytes())
    data[100:4096 * 3] = b"\xff" * (4096 * 3 - 100)
    damaged.write_bytes(bytes(data))
    with pytest.raises(backup.BackupError, match="damaged"):
        backup.restore(engine, damaged, tmp_path / "b")
    assert paragraph_texts(Session, novel_id) == ["still here"]


def test_migration_backs_up_first(sqlite_url, tmp_path):
    engine = make_engine(sqlite_url)
    upgrade(engine, "0001")
    Session = make_sessionmaker(engine)
    # Written as 0001's schema has it (today's store writes chapters, which 0001 does not have).
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO novels (id, uid, title, premise, style_notes, settings, embedding_epoch, created_at, "
            "updated_at) VALUES (1, 'u1', 'Old schema', '', '', '{}', 0, '2026-01-01 00:00:00', '2026-01-01 00:00:00')")
        connection.exec_driver_sql(
            "INSERT INTO paragraphs (novel_id, position, text, words, origin, version, created_at, updated_at) "
            "VALUES (1, 1, 'written under 0001', 3, 'written', 1, '2026-01-01 00:00:00', '2026-01-01 00:00:00')")
    novel_id = 1
    assert init_db(engine, tmp_path / "b") == head_revision()
    assert current_revision(engine) == head_revision()
    [made] = backup.list_backups(tmp_path / "b")
    assert made.reason == f"before-migration-0001-to-{head_revision()}"
    with sqlite3.connect(made.path) as copy:
        assert copy.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001",)]
        assert copy.execute("SELECT text FROM paragraphs").fetchall() == [("written under 0001",)]
    assert paragraph_texts(Session, novel_id) == ["written under 0001"]
    assert init_db(engine, tmp_path / "b") == head_revision()
    assert len(backup.list_backups(tmp_path / "b")) == 1  # nothing to migrate: no new backup


def test_deleting_a_novel_backs_up_first(database, tmp_path):
    engine, Session = database
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Doomed").id
        store.add_paragraph(s, novel_id, "last words")
    made, trashed = backup.delete_novel_with_backup(engine, Session, tmp_path / "b", novel_id,
                                                    trash_dir=tmp_path / "trash")
    assert trashed.path.is_file()
    with Session() as s:
        assert store.list_novels(s) == []
    backup.restore(engine, made, tmp_path / "b")
    with make_sessionmaker(engine)() as s:
        [summary] = store.list_novels(s)
        assert summary.title == "Doomed" and summary.paragraphs == 1


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_backup_restore_export_import(data_dir, capsys, tmp_path):
    flags = ["--data-dir", str(data_dir)]
    _, Session = open_database(f"sqlite:///{data_dir / 'longhand.db'}")
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "CLI Novel").id
        store.add_paragraph(s, novel_id, "From the command line.")
    code, out, _ = run_cli(capsys, "backup", *flags)
    assert code == 0 and Path(out.strip()).parent == data_dir / "backups"
    code, out, _ = run_cli(capsys, "export", "cli novel", "--format", "json", *flags)
    exported = Path(out.strip())
    assert code == 0 and exported.parent == (data_dir / "exports").resolve()
    assert json.loads(exported.read_text(encoding="utf-8"))["paragraphs"][0]["text"] == "From the command line."

    code, out, _ = run_cli(capsys, "import", str(exported), "--title", "Copy", *flags)
    assert code == 0 and "imported 'Copy'" in out
    code, out, _ = run_cli(capsys, "import", str(exported), "--replace", str(novel_id), *flags)
    assert code == 0 and "backed up" in out and f"moved novel {novel_id} to the trash" in out
    [replaced] = trash.list_trash(data_dir / "trash")
    assert replaced.novel_id == novel_id
    code, out, _ = run_cli(capsys, "export", "--list", *flags)
    assert out.count("CLI Novel") == 1 and "Copy" in out

    truncated = tmp_path / "cut.json"
    truncated.write_bytes(exported.read_bytes()[:200])
    code, _, err = run_cli(capsys, "import", str(truncated), *flags)
    assert code == 2 and "truncated" in err and len(err.strip().splitlines()) == 1

    code, out, _ = run_cli(capsys, "restore", "--list", *flags)
    assert "before-import-over-novel" in out
    code, out, _ = run_cli(capsys, "restore", *flags)  # newest backup: the one taken before --replace
    assert code == 0 and "restored" in out
    code, out, _ = run_cli(capsys, "export", "--list", *flags)
    assert out.count("CLI Novel") == 1 and "Copy" in out
    code, _, err = run_cli(capsys, "restore", "no-such-backup.db", *flags)
    assert code == 2 and "No backup file" in err


def test_a_failed_import_over_a_novel_replaces_nothing(data_dir, capsys, tmp_path):
    flags = ["--data-dir", str(data_dir)]
    _, Session = open_database(f"sqlite:///{data_dir / 'longhand.db'}")
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Replaced?").id
        store.add_paragraph(s, novel_id, "Still here.")
    manuscript = tmp_path / "long-title.md"
    manuscript.write_text("# " + "T" * 5000 + "\n\nA paragraph.\n", encoding="utf-8")  # a title over the limit
    code, _, err = run_cli(capsys, "import", str(manuscript), "--replace", str(novel_id), *flags)
    assert code == 2 and "title" in err and len(err.strip().splitlines()) == 1
    assert paragraph_texts(Session, novel_id) == ["Still here."]
    assert trash.list_trash(data_dir / "trash") == []
