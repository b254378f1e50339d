"""Import and export: the JSON format round-trips exactly (hypothesis), bad files are refused before anything is
written, manuscripts export as Markdown / text / EPUB, and export file names stay inside the export folder."""

from __future__ import annotations

import html
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory import chapters, exchange, revisions, store
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
     "undo", "redo", "chapter_add", "chapter_close", "chapter_move", "paragraph_move", "chapter_merge",
     "chapter_delete", "summary", "synopsis"]), texts, st.integers(0, 5)), min_size=1, max_size=14)


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
        elif op.startswith(("chapter_", "paragraph_move", "summary", "synopsis")):
            apply_chapter_op(s, novel_id, op, text, n)
        elif op == "undo":
            revisions.undo(s, novel_id)
        elif op == "redo":
            revisions.redo(s, novel_id)


def apply_chapter_op(s, novel_id: int, op: str, text: str, n: int) -> None:
    book = store.chapters(s, novel_id)
    chapter = book[n % len(book)]
    if op == "chapter_add":
        chapters.add_chapter(s, novel_id, text.strip() or "Added", after_chapter_id=chapter.id if n % 2 else None)
    elif op == "chapter_close" and not chapter.closed:
        chapters.close_chapter(s, chapter.id)
    elif op == "chapter_move":
        chapters.move_chapter(s, chapter.id, 1 + (n * 7) % len(book))
    elif op == "paragraph_move" and store.paragraphs(s, novel_id):
        paragraph = store.paragraphs(s, novel_id)[n % len(store.paragraphs(s, novel_id))]
        chapters.move_paragraph(s, paragraph.id, chapter.id)
    elif op == "chapter_merge" and chapter is not book[-1]:
        chapters.merge_with_next(s, chapter.id)
    elif op == "chapter_delete" and len(book) > 1:
        chapters.delete_chapter(s, chapter.id)
    elif op == "summary":
        current = chapters.current_summary(s, chapter.id)
        chapters.set_summary(s, chapter.id, text, expected_version=current.version if current else 0)
    elif op == "synopsis":
        current = chapters.current_synopsis(s, novel_id)
        chapters.set_synopsis(s, novel_id, text, expected_version=current.version if current else 0)


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
    assert markdown.startswith("# ../The <Tide> & Us\n\n> Two keepers.\n\n## Chapter 1\n\n"
                               "The first light failed at dusk.\n\n")
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


def chaptered(Session) -> int:
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Two Parts", premise="p").id
        first = store.last_chapter(s, novel_id)
        chapters.rename_chapter(s, first.id, "The Harbour", expected_version=1)
        store.add_paragraph(s, novel_id, "Mara lit the lamp.")
        second = chapters.close_chapter(s, first.id, next_title="The <Storm> & After")
        chapters.set_summary(s, first.id, "Mara lights the lamp.", expected_version=0)
        store.add_paragraph(s, novel_id, "The sea rose.")
        store.add_paragraph(s, novel_id, "Jonah ran.", chapter_id=second.id)
    return novel_id


def test_manuscript_exports_have_a_heading_per_chapter(Session, tmp_path):
    novel_id = chaptered(Session)
    with Session() as s:
        markdown = exchange.export_markdown(s, novel_id)
        plain = exchange.export_text(s, novel_id)
        book_path = exchange.export_to_file(s, novel_id, tmp_path, "epub")
    assert markdown == ("# Two Parts\n\n> p\n\n## The Harbour\n\nMara lit the lamp.\n\n## The <Storm> & After\n\n"
                        "The sea rose.\n\nJonah ran.\n")
    assert plain.splitlines()[3:5] == ["The Harbour", "-----------"]
    assert "The <Storm> & After\n-------------------\n\nThe sea rose." in plain
    # Markdown import gives the same chapters back.
    with Session() as s, s.begin():
        again = exchange.import_manuscript(s, markdown, "")
    with Session() as s:
        assert store.get_novel(s, again.id).title == "Two Parts"
        titles = {c.id: c.title for c in store.chapters(s, again.id)}
        assert store.get_novel(s, again.id).premise == "p"
        assert [(titles[p.chapter_id], p.text) for p in store.paragraphs(s, again.id)] == [
            ("The Harbour", "Mara lit the lamp."), ("The <Storm> & After", "The sea rose."),
            ("The <Storm> & After", "Jonah ran.")]
    check_epub(book_path, ["The Harbour", "The <Storm> & After"], ["Mara lit the lamp.", "The sea rose. Jonah ran."])


def check_epub(path: Path, titles: list[str], texts: list[str]) -> None:
    """Open with ebooklib and check the structure: one spine document per chapter, in order, each in the table
    of contents (NCX and nav) with its title as heading, and the container and package files in place."""
    from ebooklib import ITEM_DOCUMENT, epub

    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert names[0] == "mimetype" and archive.read("mimetype") == b"application/epub+zip"
        assert "META-INF/container.xml" in names
        assert archive.testzip() is None
    book = epub.read_epub(str(path))
    documents = {item.get_id(): item for item in book.get_items_of_type(ITEM_DOCUMENT)}
    spine = [documents[idref] for idref, _ in book.spine if idref in documents and idref != "nav"]
    assert len(spine) == len(titles)
    assert [link.title for link in book.toc] == titles
    assert [link.href for link in book.toc] == [item.file_name for item in spine]
    for item, title, text in zip(spine, titles, texts):
        content = item.get_content().decode("utf-8")
        assert f"<h1>{html.escape(title, quote=False)}</h1>" in content
        words = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", content)).split())
        assert words == f"{title} {text}"
    nav = next(item for item in book.get_items() if item.get_name().endswith("nav.xhtml")).get_content()
    assert all(html.escape(t, quote=False).encode() in nav for t in titles)


def test_markdown_with_top_level_headings_makes_chapters(Session):
    draft = "Before any heading.\n\n# One\n\nFirst.\n\n# Two\n\nSecond.\n\nThird.\n"
    with Session() as s, s.begin():
        novel = exchange.import_manuscript(s, draft, "Draft")
    with Session() as s:
        overview = chapters.chapter_overview(s, novel.id)
        assert [(c.title, c.paragraphs) for c in overview] == [("Chapter 1", 1), ("One", 1), ("Two", 2)]


def test_json_round_trips_chapters_summaries_and_their_history(Session):
    novel_id = chaptered(Session)
    with Session() as s, s.begin():
        chapters.set_synopsis(s, novel_id, "A keeper and a storm.", expected_version=0)
        first = store.chapters(s, novel_id)[0]
        chapters.set_summary(s, first.id, "Mara lights the lamp at dusk.", expected_version=1)
        chapters.move_chapter(s, first.id, 2)
    with Session() as s:
        exported = exchange.dumps(exchange.export_json(s, novel_id))
    with Session() as s, s.begin():
        imported = exchange.import_json(s, exchange.parse_import(exported.encode())).id
    with Session() as s:
        assert exchange.dumps(exchange.export_json(s, imported)) == exported
        [first_copy] = [c for c in store.chapters(s, imported) if c.title == "The Harbour"]
        assert [m.text for m in chapters.summary_history(s, first_copy.id)] == [
            "Mara lights the lamp.", "Mara lights the lamp at dusk."]
    # The imported history undoes the chapter move, the summary edit and the synopsis like the original.
    for _ in range(3):
        with Session() as s, s.begin():
            revisions.undo(s, novel_id)
            revisions.undo(s, imported)
    with Session() as s:
        original, copy = exchange.export_json(s, novel_id), exchange.export_json(s, imported)
        assert chapters.current_synopsis(s, imported) is None
    assert without_edit_time(original) == without_edit_time(copy)


def test_a_version_1_file_imports_as_one_chapter(Session, good_export):
    document = json.loads(good_export.read_text(encoding="utf-8"))
    document["version"] = 1
    for table in exchange.ADDED_IN_V2:
        del document[table]
    for row in document["paragraphs"]:
        del row["chapter_id"]
    for revision in document["revisions"]:
        for change in revision["changes"]:
            for side in ("before", "after"):
                if change["entity"] == "paragraphs" and change.get(side):
                    del change[side]["chapter_id"]
    parsed = exchange.parse_import(json.dumps(document).encode())
    with Session() as s, s.begin():
        novel_id = exchange.import_json(s, parsed).id
    with Session() as s:
        [chapter] = store.chapters(s, novel_id)
        assert all(p.chapter_id == chapter.id for p in store.paragraphs(s, novel_id))
        assert store.paragraphs(s, novel_id)
