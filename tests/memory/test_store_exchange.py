"""Import and export: the JSON format round-trips exactly (hypothesis), bad files are refused before anything is
written, manuscripts export as Markdown / text / EPUB, and export file names stay inside the export folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory import exchange, revisions, store
from memory.embeddings import Vector
from memory.db import open_database


def count_novels(Session) -> int:
    with Session() as s:
        return len(store.list_novels(s))


HOSTILE_SAMPLES = ["\u05e9\u05dc\u05d5\u05dd", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "e\u0301\u0302",
                   "a\x00b", "x\r\ny\r", "\x10", "\ufeffbom", ""]
texts = st.one_of(st.text(st.characters(exclude_categories=["Cs"]), max_size=40), st.sampled_from(HOSTILE_SAMPLES))
operations = st.lists(st.tuples(st.sampled_from(
    ["add", "insert", "edit", "delete", "memory", "plans", "step", "lore", "lore_edit", "rename", "settings",
     "undo", "redo"]), texts, st.integers(0, 5)), min_size=1, max_size=14)


def apply(Session, novel_id: int, op: str, text: str, n: int) -> None:
    vector = Vector("e", np.arange(1, 5, dtype=np.float32) + n)
    with Session() as s, s.begin():
        paragraphs = store.paragraphs(s, novel_id)
        target = paragraphs[n % len(paragraphs)] if paragraphs else None
        if op == "add":
            store.add_paragraph(s, novel_id, text, embedding=vector if n % 2 else None)
        elif op == "insert":
            store.add_paragraph(s, novel_id, text, position=1 + n % 3)
        elif op == "edit" and target:
            store.edit_paragraph(s, target.id, text, target.version, embedding=vector if n % 2 else None)
        elif op == "delete" and target:
            store.delete_paragraph(s, target.id, target.version)
        elif op == "memory":
            store.set_memory(s, novel_id, text, store.current_memory(s, novel_id).version)
        elif op == "plans":
            store.set_plans(s, novel_id, [text] * (n % 4))
        elif op == "step":
            pending = store.current_plans(s, novel_id)
            choice = 0 if pending is not None and pending.plans else None
            store.commit_step(s, novel_id, text, text[::-1], [text, "b", "c"], choice, text, vector)
        elif op == "lore":
            store.add_lore(s, novel_id, text or "name", [text] if text.strip() else [], text, always_on=n == 1,
                           embedding=vector)
        elif op == "lore_edit":
            entries = store.lore_entries(s, novel_id)
            if entries:
                entry = entries[n % len(entries)]
                store.edit_lore(s, entry.id, entry.version, body=text, enabled=n % 2 == 0)
        elif op == "rename" and text.strip():
            store.rename_novel(s, novel_id, text[:100])
        elif op == "settings":
            store.update_novel_settings(s, novel_id, {"sampling": {"temperature": n / 10, "note": text}})
        elif op == "undo":
            revisions.undo(s, novel_id)
        elif op == "redo":
            revisions.redo(s, novel_id)


@pytest.fixture(scope="module")
def two_databases(tmp_path_factory):
    root = tmp_path_factory.mktemp("exchange")
    return open_database(f"sqlite:///{root / 'a.db'}")[1], open_database(f"sqlite:///{root / 'b.db'}")[1]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(ops=operations, title=texts.filter(lambda t: bool(t.strip())))
def test_json_export_round_trips_exactly(two_databases, ops, title):
    source, target = two_databases
    with source() as s, s.begin():
        novel_id = store.create_novel(s, title[:200], premise=title, memory_text=title).id
    for op, text, n in ops:
        apply(source, novel_id, op, text, n)
    with source() as s:
        exported = exchange.dumps(exchange.export_json(s, novel_id))
    document = exchange.parse_import(exported.encode("utf-8"))
    with target() as s, s.begin():
        imported_id = exchange.import_json(s, document).id
    with target() as s:
        assert exchange.dumps(exchange.export_json(s, imported_id)) == exported
    # The history came along and still works: undo, redo, undo on both sides give the same documents (but for
    # the novel's "last edited" time, which is when each undo ran).
    for action in (revisions.undo, revisions.redo, revisions.undo):
        with source() as s, s.begin():
            action(s, novel_id)
        with target() as s, s.begin():
            action(s, imported_id)
        with source() as s1, target() as s2:
            assert without_edit_time(exchange.export_json(s1, novel_id)) == \
                without_edit_time(exchange.export_json(s2, imported_id))


def without_edit_time(document: dict) -> dict:
    document["novel"].pop("updated_at")
    return document


def test_round_trip_on_every_backend(Session):
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Both", memory_text="m").id
    for i, op in enumerate(["add", "step", "insert", "edit", "lore", "delete", "memory", "undo", "rename"]):
        apply(Session, novel_id, op, f"text {i} \x00 \u05e9 \U0001f600", i)
    with Session() as s:
        exported = exchange.dumps(exchange.export_json(s, novel_id))
    with Session() as s, s.begin():
        copy_id = exchange.import_json(s, json.loads(exported)).id
    with Session() as s:
        assert exchange.dumps(exchange.export_json(s, copy_id)) == exported
    with Session() as s, s.begin():
        assert revisions.undo(s, copy_id) is not None


@pytest.fixture
def good_export(Session, tmp_path) -> Path:
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Good", memory_text="m").id
        store.add_paragraph(s, novel_id, "First paragraph.", embedding=Vector("e", np.ones(4)))
        store.add_paragraph(s, novel_id, "Second paragraph.")
        store.add_lore(s, novel_id, "Ann", ["Ann"], "The ferrywoman.")
    with Session() as s:
        return exchange.export_to_file(s, novel_id, tmp_path / "exports", "json")


def _mutated(path: Path, change) -> bytes:
    document = json.loads(path.read_text(encoding="utf-8"))
    change(document)
    return json.dumps(document).encode("utf-8")


BAD_FILES = {
    "truncated": (lambda p: p.read_bytes()[: len(p.read_bytes()) // 2], "truncated"),
    "not_utf8": (lambda p: p.read_text(encoding="utf-8").replace("First", "Fürst").encode("latin-1"),
                 "not UTF-8 text (invalid byte 0xfc"),
    "empty": (lambda p: b"  \n", "is empty"),
    "not_json": (lambda p: b"{'format': 'longhand-novel'}", "not valid JSON"),
    "wrong_format": (lambda p: _mutated(p, lambda d: d.update(format="something-else")), "not a Longhand novel"),
    "newer_version": (lambda p: _mutated(p, lambda d: d.update(version=99)), "newer Longhand"),
    "text_as_number": (lambda p: _mutated(p, lambda d: d["paragraphs"][1].update(text=42)),
                       "paragraphs[1].text must be text, not a whole number"),
    "version_as_text": (lambda p: _mutated(p, lambda d: d["paragraphs"][0].update(version="2")),
                        "paragraphs[0].version must be a whole number, not text"),
    "missing_field": (lambda p: _mutated(p, lambda d: d["lore_entries"][0].pop("body")), "lacks 'body'"),
    "missing_table": (lambda p: _mutated(p, lambda d: d.pop("revisions")), "lacks 'revisions'"),
    "bad_reference": (lambda p: _mutated(p, lambda d: d["embeddings"][0].update(paragraph_id=77)),
                      "points at paragraphs id 77"),
    "position_gap": (lambda p: _mutated(p, lambda d: d["paragraphs"][1].update(position=5)), "without gaps"),
    "bad_date": (lambda p: _mutated(p, lambda d: d["novel"].update(created_at="yesterday")), "ISO date-time"),
    "bad_vector": (lambda p: _mutated(p, lambda d: d["embeddings"][0].update(dim=5)), "float32"),
    "bad_change": (lambda p: _mutated(p, lambda d: d["revisions"][-1]["changes"].append({"entity": "users"})),
                   "unknown table"),
    "empty_title": (lambda p: _mutated(p, lambda d: d["novel"].update(title=" \t")), "novel.title is empty"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_import_files_are_refused_before_writing(Session, good_export, tmp_path, case):
    make, message = BAD_FILES[case]
    bad = tmp_path / f"{case}.json"
    bad.write_bytes(make(good_export))
    before = count_novels(Session)
    with pytest.raises(exchange.ExchangeError) as info:
        document = exchange.read_import_file(bad)
        with Session() as s, s.begin():
            exchange.import_json(s, document)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert count_novels(Session) == before


def test_oversized_import_is_refused(good_export):
    with pytest.raises(exchange.ExchangeError, match="import limit|limited to"):
        exchange.read_import_file(good_export, max_bytes=100)


def test_import_json_validates_before_writing_even_when_called_directly(Session, good_export):
    document = json.loads(good_export.read_text(encoding="utf-8"))
    document["revisions"][0]["state"] = "maybe"
    before = count_novels(Session)
    with pytest.raises(exchange.ExchangeError, match="state must be one of"):
        with Session() as s, s.begin():
            exchange.import_json(s, document)
    assert count_novels(Session) == before


@pytest.mark.parametrize("title", ["../../etc/passwd", "/abs/path", "CON", "...", "", "a" * 500, "x/../../y",
                                   "Cé\u0301 \U0001f600 na\x00me:*?<>|", "\\windows\\path"])
def test_export_file_names_stay_inside_the_export_folder(tmp_path, title):
    exports = tmp_path / "exports"
    exports.mkdir()
    path = exchange.export_path(exports, title, "md")
    assert path.parent == exports.resolve()
    assert not path.name.startswith(".") and len(path.name) < 120
    assert path.name.split("-")[0].lower() not in ("con", "")
    path.write_text("x")
    assert exchange.export_path(exports, title, "md") != path  # never overwrites


def test_manuscript_exports(Session, tmp_path):
    from ebooklib import ITEM_DOCUMENT, epub

    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "../The <Tide> & Us", premise="Two keepers.").id
        store.add_paragraph(s, novel_id, "The first light failed at dusk.")
        store.add_paragraph(s, novel_id, "Mara climbed <the> stairs & swore.\x00")
    with Session() as s:
        md = exchange.export_to_file(s, novel_id, tmp_path, "md")
        txt = exchange.export_to_file(s, novel_id, tmp_path, "txt")
        book_path = exchange.export_to_file(s, novel_id, tmp_path, "epub")
    assert all(p.parent == tmp_path.resolve() for p in (md, txt, book_path))
    markdown = md.read_text(encoding="utf-8")
    assert markdown.startswith("# ../The <Tide> & Us\n\n> Two keepers.\n\nThe first light failed at dusk.\n\n")
    assert txt.read_text(encoding="utf-8").splitlines()[:2] == ["../The <Tide> & Us", "=" * 18]
    book = epub.read_epub(str(book_path))
    assert book.get_metadata("DC", "title")[0][0] == "../The <Tide> & Us"
    body = b"".join(item.get_content() for item in book.get_items_of_type(ITEM_DOCUMENT)).decode("utf-8")
    assert "Mara climbed &lt;the&gt; stairs &amp; swore." in body and "The first light failed at dusk." in body


def test_manuscript_import_splits_paragraphs(Session, tmp_path):
    source = tmp_path / "draft.md"
    source.write_bytes("# My Draft\r\n\r\nOne.\r\nStill one.\r\n\r\n\r\nTwo \u05e9.\n".encode("utf-8"))
    with Session() as s, s.begin():
        novel = exchange.import_manuscript(s, exchange.read_manuscript_file(source), "")
    with Session() as s:
        assert store.get_novel(s, novel.id).title == "My Draft"
        assert [p.text for p in store.paragraphs(s, novel.id)] == ["One.\nStill one.", "Two \u05e9."]


def test_hostile_text_survives_json_export_and_import(Session, tmp_path):
    from tests.memory.test_store_core import HOSTILE

    with Session() as s, s.begin():
        novel_id = store.create_novel(s, HOSTILE["zwj_emoji"], premise=HOSTILE["crlf"]).id
        for text in HOSTILE.values():
            store.add_paragraph(s, novel_id, text)
        store.set_memory(s, novel_id, HOSTILE["nul"] + HOSTILE["rtl"], expected_version=1)
    with Session() as s:
        path = exchange.export_to_file(s, novel_id, tmp_path, "json")
    document = exchange.read_import_file(path)
    with Session() as s, s.begin():
        copy_id = exchange.import_json(s, document).id
    with Session() as s:
        assert [p.text for p in store.paragraphs(s, copy_id)] == list(HOSTILE.values())
        assert store.current_memory(s, copy_id).text == HOSTILE["nul"] + HOSTILE["rtl"]
        assert store.get_novel(s, copy_id).premise == HOSTILE["crlf"]


def test_the_settings_check_is_the_callers(Session, good_export, tmp_path):
    """memory/ does not know what settings mean: it runs the check it is given and names the file."""
    bad = tmp_path / "hot.json"
    bad.write_bytes(_mutated(good_export, lambda d: d["novel"]["settings"].update(sampling={"temperature": "hot"})))

    def check(settings):
        if not isinstance(settings.get("sampling", {}).get("temperature", 0.5), float):
            raise ValueError("temperature must be a number")

    exchange.read_import_file(bad)  # no check given: the shape is all that is judged
    with pytest.raises(exchange.ExchangeError, match=r"^hot.json holds settings Longhand cannot use: temperature"):
        exchange.read_import_file(bad, check_settings=check)
    exchange.read_import_file(good_export, check_settings=check)


def test_an_empty_title_given_for_the_import_is_refused(Session, good_export):
    document = exchange.read_import_file(good_export)
    before = count_novels(Session)
    with pytest.raises(exchange.ExchangeError, match="title for the imported novel is empty"):
        with Session() as s, s.begin():
            exchange.import_json(s, document, title="  ")
    assert count_novels(Session) == before
