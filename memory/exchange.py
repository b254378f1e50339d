"""Import and export of novels: the manuscript as Markdown, plain text or EPUB, and a full-fidelity JSON document.

The JSON format ("longhand-novel", version 2) holds everything a novel is: its settings, chapters, paragraphs (and
their kept alternative versions; a file written before those existed has none), every version of the short-term
memory, of each chapter summary and of the synopsis, plan sets, lore, embeddings and the whole undo/redo history. A
version-1 file (before chapters) is read as one chapter holding every paragraph. Database ids are replaced by
export-local ones (1, 2, ... per table, in creation order), so exporting, importing and exporting again gives the
same document. State snapshots are not exported: they are a cache a model rebuilds by re-reading the manuscript.

An import is validated completely before anything is written and then written in the caller's one transaction:
it is all there or none of it. The novel's settings are app/'s to judge: callers pass `check_settings` (a function
raising ValueError with one line), which this module calls without knowing what the settings mean. Files that are too big, not UTF-8, truncated, or not the right shape are refused
with an `ExchangeError` whose one-line message says what is wrong and where.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import re
import tempfile
import unicodedata
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import Boolean, DateTime, Integer, LargeBinary, String, Text, func, inspect, select, text
from sqlalchemy.orm import Session
from sqlalchemy.types import JSON

from memory import chapters, revisions, store
from memory.errors import StoreError
from memory.private import private_dir, write_private_atomic
from memory.schema import (
    ALTERNATIVE_KINDS,
    ORIGINS,
    Alternative,
    Chapter,
    ChapterSummary,
    Embedding,
    LoreEntry,
    Novel,
    Paragraph,
    PlanSet,
    Revision,
    SafeJSON,
    SafeText,
    ShortTermMemory,
    Synopsis,
)

FORMAT = "longhand-novel"
FORMAT_VERSION = 2
MAX_IMPORT_BYTES = 256 * 1024 * 1024
EXPORT_FORMATS = ("md", "txt", "epub", "json")
REVISION_STATES = ("done", "undone", "dropped")

# Child tables in insertion order (parents first). The novel itself is the "novel" object.
TABLES: dict[str, type] = {
    "chapters": Chapter,
    "paragraphs": Paragraph,
    "chapter_summaries": ChapterSummary,
    "synopses": Synopsis,
    "lore_entries": LoreEntry,
    "short_term_memories": ShortTermMemory,
    "plan_sets": PlanSet,
    "alternatives": Alternative,
    "embeddings": Embedding,
    "revisions": Revision,
}
# Foreign-key fields and the table they point into ("novels" always maps to the one novel, local id 1).
REFERENCES = {"novel_id": "novels", "paragraph_id": "paragraphs", "lore_entry_id": "lore_entries",
              "chapter_id": "chapters"}
# Tables a version-1 file does not have (see `_upgrade_v1`).
ADDED_IN_V2 = ("chapters", "chapter_summaries", "synopses")
V1_CHAPTER_TITLE = "Chapter 1"
# Nullable fields added after FORMAT_VERSION 1 was first written: a file without them is still valid (they
# are derived, and memory.retrieval fills them in on first use).
ADDED_LATER = {("embeddings", "sentence_vectors")}
# Tables added after FORMAT_VERSION 1 was first written: a file without them has none of their rows.
TABLES_ADDED_LATER = {"alternatives"}
NOVEL_FIELDS = ("title", "premise", "style_notes", "settings", "created_at", "updated_at")
# Novel fields that only make sense inside one database (a unique id for caches, a cache counter); never exported.
NOVEL_PRIVATE = ("uid", "embedding_epoch")


class ExchangeError(StoreError):
    """An import or export that cannot be done; one line saying what is wrong."""


# ---------------------------------------------------------------------------------------------------------------
# Export.

def _collect_ids(rows: dict[str, list[dict]], revision_rows: list[dict]) -> dict[str, list[int]]:
    ids: dict[str, set[int]] = {name: {r["id"] for r in table} for name, table in rows.items()}
    ids["revisions"] = {r["id"] for r in revision_rows}

    def note_row(entity: str, row: dict | None) -> None:
        if not row:
            return
        if entity in ids and "id" in row:
            ids[entity].add(row["id"])
        for field, target in REFERENCES.items():
            if target in ids and row.get(field) is not None:
                ids[target].add(row[field])

    for table in rows.values():
        for row in table:
            note_row("", row)
    for revision in revision_rows:
        for change in revision["changes"]:
            if change["entity"] == "shift":
                continue
            if change["entity"] == "positions":
                ids["paragraphs"].update(int(pid) for pid in change["before"])
                continue
            if change["entity"] in ids:
                ids[change["entity"]].add(change["id"])
            note_row(change["entity"], change["before"])
            note_row(change["entity"], change["after"])
    return {name: sorted(values) for name, values in ids.items()}


def _remap_row(entity: str, row: dict | None, maps: dict[str, dict[int, int]]) -> dict | None:
    if row is None:
        return None
    out = dict(row)
    if entity == "novels":
        for private in NOVEL_PRIVATE:
            out.pop(private, None)
    if "id" in out and entity in maps:
        out["id"] = maps[entity][out["id"]]
    for field, target in REFERENCES.items():
        if field in out and out[field] is not None:
            out[field] = maps[target][out[field]]
    return out


def _remap_changes(changes: list[dict], maps: dict[str, dict[int, int]]) -> list[dict]:
    out = []
    for change in changes:
        if change["entity"] == "shift":
            out.append(dict(change))
            continue
        if change["entity"] == "positions":
            out.append({"entity": "positions", **{side: {str(maps["paragraphs"][int(pid)]): position
                                                         for pid, position in change[side].items()}
                                                  for side in ("before", "after")}})
            continue
        entity = change["entity"]
        out.append({
            "entity": entity,
            "id": maps[entity][change["id"]] if entity in maps else 1,
            "before": _remap_row(entity, change["before"], maps),
            "after": _remap_row(entity, change["after"], maps),
        })
    return out


def export_json(session: Session, novel_id: int) -> dict[str, Any]:
    """The whole novel as a JSON-able dict in the versioned exchange format."""
    novel = store.get_novel(session, novel_id)
    rows: dict[str, list[dict]] = {}
    # A database not migrated yet (the backup taken before a migration, on a server without a file copy) lacks the
    # tables and columns added since: it is read column by column, and without chapters it is written as a
    # version-1 document, which an import upgrades exactly as the migration does.
    inspector = inspect(session.connection())
    before_chapters = not inspector.has_table("chapters")
    for name, model in TABLES.items():
        if name == "revisions":
            continue
        if not inspector.has_table(name):
            if name not in TABLES_ADDED_LATER | set(ADDED_IN_V2):
                raise ExchangeError(f"The database has no table {name!r}: it is not a Longhand database.")
            continue
        rows[name] = _table_rows(session, model, novel_id, {c["name"] for c in inspector.get_columns(name)})
    revision_rows = [revisions.row_to_dict(r) for r in session.scalars(
        select(Revision).where(Revision.novel_id == novel_id).order_by(Revision.id))]
    ids = _collect_ids(rows, revision_rows)
    maps = {name: {old: new for new, old in enumerate(values, start=1)} for name, values in ids.items()}
    maps["novels"] = {novel.id: 1}

    document: dict[str, Any] = {"format": FORMAT, "version": 1 if before_chapters else FORMAT_VERSION}
    novel_row = revisions.row_to_dict(novel)
    document["novel"] = {field: novel_row[field] for field in NOVEL_FIELDS}
    for name in TABLES:
        if name not in rows and name != "revisions":
            if name in TABLES_ADDED_LATER:
                document[name] = []
            continue
        if name == "revisions":
            document[name] = [{**_remap_row(name, r, maps), "changes": _remap_changes(r["changes"], maps)}
                              for r in revision_rows]
        else:
            document[name] = [_remap_row(name, r, maps) for r in rows[name]]
    return document


def _table_rows(session: Session, model: type, novel_id: int, present: set[str]) -> list[dict[str, Any]]:
    """A novel's rows of `model` as `revisions.row_to_dict` gives them, reading only the columns the database has
    (a column added by a later migration is left out)."""
    columns = [column for column in model.__table__.columns if column.name in present]
    query = select(*columns).where(model.__table__.c.novel_id == novel_id).order_by(model.__table__.c.id)
    return [{column.key: revisions.column_to_json(column, row[column.name]) for column in columns}
            for row in session.execute(query).mappings()]


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, ensure_ascii=False, indent=1, sort_keys=True)


def _chapters_with_text(session: Session, novel_id: int) -> list[tuple[Chapter, list[Paragraph]]]:
    members: dict[int, list[Paragraph]] = {}
    for paragraph in store.paragraphs(session, novel_id):
        members.setdefault(paragraph.chapter_id, []).append(paragraph)
    return [(chapter, members.get(chapter.id, [])) for chapter in store.chapters(session, novel_id)]


def export_markdown(session: Session, novel_id: int) -> str:
    """`# Title`, the premise as a quote, then `## Chapter title` before each chapter's paragraphs."""
    novel = store.get_novel(session, novel_id)
    parts = [f"# {_one_line(novel.title)}"]
    if novel.premise.strip():
        parts.append("\n".join(f"> {line}" if line else ">" for line in novel.premise.strip().splitlines()))
    for chapter, members in _chapters_with_text(session, novel_id):
        parts.append(f"## {_one_line(chapter.title)}")
        parts += [p.text for p in members]
    return "\n\n".join(parts) + "\n"


def export_text(session: Session, novel_id: int) -> str:
    """The title underlined with '=', each chapter title underlined with '-', then its paragraphs."""
    novel = store.get_novel(session, novel_id)
    title = _one_line(novel.title)
    parts = [title + "\n" + "=" * max(3, len(title))]
    for chapter, members in _chapters_with_text(session, novel_id):
        heading = _one_line(chapter.title)
        parts.append(heading + "\n" + "-" * max(3, len(heading)))
        parts += [p.text for p in members]
    return "\n\n".join(parts) + "\n"


_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(value: str) -> str:
    # XHTML cannot hold control characters (NUL etc.): they are dropped from the EPUB only.
    return html.escape(_XML_INVALID.sub("", value), quote=False)


def export_epub(session: Session, novel_id: int) -> bytes:
    """One XHTML document per chapter, in the spine and in the table of contents (NCX and nav)."""
    from ebooklib import epub  # optional dependency: only an EPUB export needs it

    novel = store.get_novel(session, novel_id)
    title = _one_line(novel.title)
    book = epub.EpubBook()
    book.set_identifier(f"longhand-{novel.uid}")
    book.set_title(title)
    book.set_language("en")
    documents = []
    for index, (chapter, members) in enumerate(_chapters_with_text(session, novel_id), start=1):
        heading = _one_line(chapter.title)
        body = "".join("<p>" + "<br/>".join(_xml_text(line) for line in p.text.splitlines()) + "</p>\n"
                       for p in members)
        document = epub.EpubHtml(title=heading, file_name=f"chapter-{index:03d}.xhtml", lang="en",
                                 uid=f"chapter-{index:03d}")
        document.content = f"<h1>{_xml_text(heading)}</h1>\n{body}"
        book.add_item(document)
        documents.append(document)
    book.toc = documents
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *documents]
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "book.epub"
        epub.write_epub(str(target), book)
        return target.read_bytes()


def _one_line(value: str) -> str:
    return " ".join(value.split()) or "Untitled"


_UNSAFE = re.compile(r"[^\w\-. ]+", re.UNICODE)
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def safe_file_stem(title: str, max_chars: int = 80) -> str:
    """A file name stem from a title: letters, digits, '-', '_', '.', ' ' only; never empty, hidden or reserved."""
    stem = unicodedata.normalize("NFKC", title)
    stem = _UNSAFE.sub("_", stem).strip(" ._")
    stem = re.sub(r"[ _]+", "_", stem)[:max_chars].strip(" ._")
    if not stem or stem.lower() in _WINDOWS_RESERVED:
        stem = f"novel_{stem}" if stem else "novel"
    return stem


def export_path(export_dir: Path, title: str, extension: str, *, when: datetime | None = None) -> Path:
    """A fresh path inside `export_dir` for an export of `title` (never outside it, never overwriting)."""
    export_dir = Path(export_dir).resolve()
    stamp = (when or datetime.now()).strftime("%Y%m%d-%H%M%S")
    candidate = export_dir / f"{safe_file_stem(title)}-{stamp}.{extension}"
    counter = 1
    while candidate.exists():
        counter += 1
        candidate = export_dir / f"{safe_file_stem(title)}-{stamp}-{counter}.{extension}"
    if candidate.resolve().parent != export_dir:
        raise ExchangeError(f"Refusing to write outside the export folder {export_dir}.")
    return candidate


def export_to_file(session: Session, novel_id: int, export_dir: Path | str, fmt: str) -> Path:
    """Write the novel as `fmt` (md, txt, epub, json) into `export_dir`; returns the new file's path."""
    if fmt not in EXPORT_FORMATS:
        raise ExchangeError(f"Unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}.")
    novel = store.get_novel(session, novel_id)
    export_dir = Path(export_dir)
    private_dir(export_dir, tighten_existing=False)
    if fmt == "md":
        data = export_markdown(session, novel_id).encode("utf-8")
    elif fmt == "txt":
        data = export_text(session, novel_id).encode("utf-8")
    elif fmt == "epub":
        data = export_epub(session, novel_id)
    else:
        data = dumps(export_json(session, novel_id)).encode("utf-8")
    target = export_path(export_dir, novel.title, fmt)
    return write_private_atomic(target, data)


# ---------------------------------------------------------------------------------------------------------------
# Reading and validating an import.

SettingsCheck = Callable[[Any], None]


def read_import_file(path: Path | str, max_bytes: int = MAX_IMPORT_BYTES, *,
                     check_settings: SettingsCheck | None = None, require_title: bool = True) -> dict[str, Any]:
    """Read and fully validate a JSON export file; raises ExchangeError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ExchangeError(f"{path} does not exist or is not a file.")
    size = path.stat().st_size
    if size > max_bytes:
        raise ExchangeError(f"{path.name} is {size / 2**20:.1f} MiB; imports are limited to "
                            f"{max_bytes / 2**20:.0f} MiB.")
    with open(path, "rb") as handle:
        raw = handle.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise ExchangeError(f"{path.name} is larger than the {max_bytes / 2**20:.0f} MiB import limit.")
    return parse_import(raw, name=path.name, check_settings=check_settings, require_title=require_title)


def parse_import(raw: bytes, name: str = "the file", *, check_settings: SettingsCheck | None = None,
                 require_title: bool = True) -> dict[str, Any]:
    if not raw.strip():
        raise ExchangeError(f"{name} is empty.")
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExchangeError(f"{name} is not UTF-8 text (invalid byte 0x{raw[exc.start]:02x} at offset "
                            f"{exc.start}); export it again from Longhand.") from None
    if decoded.startswith("\ufeff"):
        decoded = decoded[1:]
    try:
        document = json.loads(decoded)
    except json.JSONDecodeError as exc:
        if _unclosed(decoded):
            raise ExchangeError(f"{name} is truncated: the JSON ends early (line {exc.lineno}, column "
                                f"{exc.colno}); the file was probably cut off while copying.") from None
        raise ExchangeError(f"{name} is not valid JSON: {exc.msg} at line {exc.lineno}, column "
                            f"{exc.colno}.") from None
    validate(document, name, check_settings=check_settings, require_title=require_title)
    return document


def _unclosed(content: str) -> bool:
    """True when the text ends inside a string or with brackets left open: a file cut short."""
    depth, in_string, escaped = 0, False, False
    for char in content:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
    return in_string or depth > 0


_PY_TYPES = {"int": (int,), "str": (str,), "bool": (bool,), "list": (list,), "dict": (dict,)}


def _field_kinds(model: type) -> dict[str, tuple[str, bool]]:
    kinds = {}
    for column in model.__table__.columns:
        t = column.type
        if isinstance(t, Boolean):
            kind = "bool"
        elif isinstance(t, Integer):
            kind = "int"
        elif isinstance(t, DateTime):
            kind = "datetime"
        elif isinstance(t, LargeBinary):
            kind = "base64"
        elif isinstance(t, (SafeJSON, JSON)):
            kind = "json"
        elif isinstance(t, (SafeText, String, Text)):
            kind = "str"
        else:
            raise AssertionError(f"unhandled column type {t!r}")
        kinds[column.key] = (kind, bool(column.nullable))
    return kinds


_KINDS = {name: _field_kinds(model) for name, model in TABLES.items()}
_KINDS["novels"] = {k: v for k, v in _field_kinds(Novel).items() if k not in NOVEL_PRIVATE}
_JSON_SHAPES = {("novels", "settings"): "dict", ("plan_sets", "plans"): "list[str]",
                ("alternatives", "plans"): "list[str]", ("lore_entries", "keys"): "list[str]",
                ("revisions", "changes"): "list"}


def _fail(name: str, where: str, problem: str) -> None:
    raise ExchangeError(f"{name} is not a valid Longhand export: {where} {problem}.")


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false", int: "a whole number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _check_row(name: str, entity: str, where: str, row: Any, *, partial: bool = False) -> None:
    if not isinstance(row, dict):
        _fail(name, where, f"must be an object, not {_type_name(row)}")
    kinds = _KINDS[entity]
    missing = [k for k in kinds if k not in row and (entity, k) not in ADDED_LATER]
    if missing and not partial:
        _fail(name, where, f"lacks {', '.join(repr(m) for m in missing)}")
    unknown = [k for k in row if k not in kinds]
    if unknown:
        _fail(name, where, f"has unknown field(s) {', '.join(repr(u) for u in unknown)}")
    for key, value in row.items():
        kind, nullable = kinds[key]
        at = f"{where}.{key}"
        if value is None:
            if not nullable:
                _fail(name, at, "must not be null")
            continue
        if kind == "datetime":
            if not isinstance(value, str):
                _fail(name, at, f"must be a date-time text, not {_type_name(value)}")
            try:
                datetime.fromisoformat(value)
            except ValueError:
                _fail(name, at, f"is not an ISO date-time ({value[:40]!r})")
        elif kind == "base64":
            if not isinstance(value, str):
                _fail(name, at, f"must be base64 text, not {_type_name(value)}")
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                _fail(name, at, "is not valid base64")
        elif kind == "json":
            shape = _JSON_SHAPES.get((entity, key), "any")
            if shape == "dict" and not isinstance(value, dict):
                _fail(name, at, f"must be an object, not {_type_name(value)}")
            if shape.startswith("list") and not isinstance(value, list):
                _fail(name, at, f"must be a list, not {_type_name(value)}")
            if shape == "list[str]" and not all(isinstance(v, str) for v in value):
                _fail(name, at, "must be a list of texts")
        elif kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                _fail(name, at, f"must be a whole number, not {_type_name(value)}")
        elif not isinstance(value, _PY_TYPES[kind]):
            expected = {"str": "text", "bool": "true/false"}[kind]
            _fail(name, at, f"must be {expected}, not {_type_name(value)}")
        if kind == "str":
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                _fail(name, at, "holds invalid Unicode (a lone surrogate)")


def validate(document: Any, name: str = "the file", *, check_settings: SettingsCheck | None = None,
             require_title: bool = True) -> None:
    """Check a parsed export completely: shape, types, a title, that every reference points at something, and
    (with `check_settings`) the novel's settings. `require_title=False` is for putting back what a database already
    held (a backup, the trash), which may predate the title check."""
    if not isinstance(document, dict):
        _fail(name, "the top level", f"must be an object, not {_type_name(document)}")
    if document.get("format") != FORMAT:
        raise ExchangeError(f"{name} is not a Longhand novel export (its \"format\" is "
                            f"{document.get('format')!r}, expected {FORMAT!r}).")
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        _fail(name, "\"version\"", f"must be a positive whole number, not {version!r}")
    if version > FORMAT_VERSION:
        raise ExchangeError(f"{name} was written by a newer Longhand (format version {version}; this one reads up "
                            f"to {FORMAT_VERSION}): upgrade Longhand to import it.")
    if version == 1:
        _upgrade_v1(name, document)
    expected = {"format", "version", "novel", *TABLES}
    unknown = sorted(set(document) - expected)
    if unknown:
        _fail(name, "the top level", f"has unknown field(s) {', '.join(map(repr, unknown))}")
    for key in TABLES_ADDED_LATER:
        document.setdefault(key, [])
    for key in ("novel", *TABLES):
        if key not in document:
            _fail(name, "the top level", f"lacks {key!r} (the file may be cut short)")
    novel = document["novel"]
    _check_row(name, "novels", "novel", novel, partial=True)
    missing = [field for field in NOVEL_FIELDS if field not in novel]
    if missing or set(novel) - set(NOVEL_FIELDS):
        _fail(name, "novel", f"must have exactly the fields {', '.join(NOVEL_FIELDS)}")
    if require_title and not novel["title"].strip():
        _fail(name, "novel.title", "is empty (a novel needs a title)")
    if check_settings is not None:
        try:
            check_settings(novel["settings"])
        except ValueError as exc:
            raise ExchangeError(f"{name} holds settings Longhand cannot use: {exc}.") from None
    ids: dict[str, set[int]] = {"novels": {1}}
    for entity in TABLES:
        table = document[entity]
        if not isinstance(table, list):
            _fail(name, entity, f"must be a list, not {_type_name(table)}")
        seen: set[int] = set()
        for index, row in enumerate(table):
            _check_row(name, entity, f"{entity}[{index}]", row)
            if row["id"] in seen:
                _fail(name, f"{entity}[{index}].id", f"repeats id {row['id']}")
            seen.add(row["id"])
            if row.get("novel_id") != 1:
                _fail(name, f"{entity}[{index}].novel_id", "must be 1 (the novel in this file)")
        ids[entity] = seen
    _check_live_references(name, document, ids)
    _check_story(name, document)
    _check_revisions(name, document)


def _upgrade_v1(name: str, document: dict) -> None:
    """A version-1 file, written before chapters: in place, give it one chapter holding every paragraph (and the
    paragraph rows in its history the same chapter), as migration 0005 does to a database."""
    present = [table for table in ADDED_IN_V2 if table in document]
    if present:
        _fail(name, "the top level", f"is format version 1 but has {', '.join(map(repr, present))}")
    if not isinstance(document.get("paragraphs"), list) or not isinstance(document.get("revisions"), list):
        return  # the checks that follow say what is wrong
    novel = document.get("novel") if isinstance(document.get("novel"), dict) else {}
    stamp = novel.get("created_at") or "2000-01-01T00:00:00"
    document["chapters"] = [{"id": 1, "novel_id": 1, "position": 1, "title": V1_CHAPTER_TITLE, "closed": False,
                             "summary_stale": False, "version": 1, "created_at": stamp, "updated_at": stamp}]
    document["chapter_summaries"] = []
    document["synopses"] = []
    for row in document["paragraphs"]:
        if isinstance(row, dict):
            row["chapter_id"] = 1
    for revision in document["revisions"]:
        for change in (revision.get("changes") or []) if isinstance(revision, dict) else []:
            if isinstance(change, dict) and change.get("entity") == "paragraphs":
                for side in ("before", "after"):
                    if isinstance(change.get(side), dict):
                        change[side]["chapter_id"] = 1
    document["version"] = FORMAT_VERSION


def _check_live_references(name: str, document: dict, ids: dict[str, set[int]]) -> None:
    for entity in TABLES:
        for index, row in enumerate(document[entity]):
            for field, target in REFERENCES.items():
                if field in row and row[field] is not None and row[field] not in ids.get(target, set()):
                    _fail(name, f"{entity}[{index}].{field}", f"points at {target} id {row[field]}, which is "
                                                                "not in the file")
    for index, row in enumerate(document["embeddings"]):
        if (row["paragraph_id"] is None) == (row["lore_entry_id"] is None):
            _fail(name, f"embeddings[{index}]", "must belong to exactly one paragraph or lore entry")
        if row["dim"] < 1 or len(base64.b64decode(row["vector"])) != 4 * row["dim"]:
            _fail(name, f"embeddings[{index}].vector", f"does not hold {row['dim']} float32 numbers")


def _check_story(name: str, document: dict) -> None:
    positions = sorted(p["position"] for p in document["paragraphs"])
    if positions != list(range(1, len(positions) + 1)):
        _fail(name, "paragraphs", "must have positions 1, 2, 3, ... without gaps or repeats")
    for index, row in enumerate(document["paragraphs"]):
        if row["origin"] not in ORIGINS:
            _fail(name, f"paragraphs[{index}].origin", f"must be one of {', '.join(ORIGINS)}")
        if row["version"] < 1:
            _fail(name, f"paragraphs[{index}].version", "must be at least 1")
    if not document["chapters"]:
        _fail(name, "chapters", "must hold at least one chapter")
    chapter_rank = {row["id"]: (row["position"], row["id"]) for row in document["chapters"]}
    ranks = []
    for index, row in enumerate(sorted(document["paragraphs"], key=lambda r: r["position"])):
        if row["chapter_id"] is None:
            _fail(name, f"paragraph at position {row['position']}", "belongs to no chapter")
        ranks.append(chapter_rank[row["chapter_id"]])
    if ranks != sorted(ranks):
        _fail(name, "paragraphs", "must read chapter by chapter (a chapter's paragraphs together, in chapter order)")
    for index, row in enumerate(document["alternatives"]):
        if row["kind"] not in ALTERNATIVE_KINDS:
            _fail(name, f"alternatives[{index}].kind", f"must be one of {', '.join(ALTERNATIVE_KINDS)}")
        if row["origin"] not in ORIGINS:
            _fail(name, f"alternatives[{index}].origin", f"must be one of {', '.join(ORIGINS)}")
    versions = [m["version"] for m in document["short_term_memories"]]
    if len(set(versions)) != len(versions):
        _fail(name, "short_term_memories", "repeat a version number")
    seqs = [r["seq"] for r in document["revisions"]]
    if len(set(seqs)) != len(seqs):
        _fail(name, "revisions", "repeat a sequence number")


def _check_revisions(name: str, document: dict) -> None:
    for index, revision in enumerate(document["revisions"]):
        where = f"revisions[{index}]"
        if revision["state"] not in REVISION_STATES:
            _fail(name, f"{where}.state", f"must be one of {', '.join(REVISION_STATES)}")
        for c_index, change in enumerate(revision["changes"]):
            at = f"{where}.changes[{c_index}]"
            if not isinstance(change, dict):
                _fail(name, at, f"must be an object, not {_type_name(change)}")
            entity = change.get("entity")
            if entity == "positions":
                if set(change) != {"entity", "before", "after"} or not all(
                        isinstance(change[side], dict) and set(change[side]) == set(change["before"])
                        and all(isinstance(k, str) and k.isdigit() and isinstance(v, int) and not isinstance(v, bool)
                                for k, v in change[side].items()) for side in ("before", "after")):
                    _fail(name, at, "must be a move of paragraphs: 'before' and 'after' mapping the same paragraph "
                                    "ids to whole-number positions")
                continue
            if entity == "shift":
                if set(change) != {"entity", "from", "delta"} or not all(
                        isinstance(change[k], int) and not isinstance(change[k], bool) for k in ("from", "delta")):
                    _fail(name, at, "must be a shift with whole-number 'from' and 'delta'")
                continue
            if entity not in _KINDS:
                _fail(name, f"{at}.entity", f"names an unknown table {entity!r}")
            if set(change) != {"entity", "id", "before", "after"}:
                _fail(name, at, "must have exactly 'entity', 'id', 'before' and 'after'")
            if not isinstance(change["id"], int) or isinstance(change["id"], bool):
                _fail(name, f"{at}.id", "must be a whole number")
            for side in ("before", "after"):
                if change[side] is not None:
                    _check_row(name, entity, f"{at}.{side}", change[side], partial=entity == "novels")


# ---------------------------------------------------------------------------------------------------------------
# Writing an import.

def _allocate_ids(session: Session, table: str, count: int) -> list[int]:
    """`count` fresh primary keys for `table`, never used before and never handed out again."""
    if count == 0:
        return []
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        rows = session.execute(text(f"SELECT nextval(pg_get_serial_sequence('{table}', 'id')) "
                                    "FROM generate_series(1, :n)"), {"n": count}).scalars().all()
        return [int(r) for r in rows]
    model = TABLES[table]
    base = int(session.scalar(select(func.coalesce(func.max(model.id), 0))) or 0)
    if dialect == "sqlite":
        seq = session.execute(text("SELECT seq FROM sqlite_sequence WHERE name = :t"), {"t": table}).scalar()
        base = max(base, int(seq or 0))
        top = base + count
        updated = session.execute(text("UPDATE sqlite_sequence SET seq = :s WHERE name = :t"),
                                  {"s": top, "t": table}).rowcount
        if not updated:
            session.execute(text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :s)"), {"t": table, "s": top})
    return list(range(base + 1, base + count + 1))


def import_json(session: Session, document: dict[str, Any], *, title: str | None = None) -> Novel:
    """Create a new novel from a validated export (call `validate` or `read_import_file` first; this re-checks).

    Everything is written in the caller's transaction; if any row fails, the transaction rolls back whole.
    """
    validate(document, require_title=False)
    revision_rows = document["revisions"]
    rows = {name: document[name] for name in TABLES if name != "revisions"}
    local_ids = _collect_ids(rows, revision_rows)

    novel_row = dict(document["novel"])
    if title is not None:
        if not title.strip():
            raise ExchangeError("The title for the imported novel is empty: give a title, or leave it out to keep "
                                "the file's.")
        novel_row["title"] = title
    novel = Novel(**revisions.row_values(Novel, novel_row), embedding_epoch=1)
    session.add(novel)
    session.flush()
    maps: dict[str, dict[int, int]] = {"novels": {1: novel.id}}
    for name, values in local_ids.items():
        maps[name] = dict(zip(values, _allocate_ids(session, name, len(values))))

    for name, model in TABLES.items():
        for row in document[name]:
            mapped = _remap_row(name, row, maps)
            if name == "revisions":
                mapped["changes"] = _remap_changes(row["changes"], maps)
            session.add(model(**revisions.row_values(model, mapped)))
        session.flush()
    return novel


_HEADING = re.compile(r"^(#{1,6}) +(\S.*)$")


def _heading(block: str) -> tuple[int, str] | None:
    match = _HEADING.match(block) if "\n" not in block else None
    return (len(match.group(1)), match.group(2).strip()) if match else None


def import_manuscript(session: Session, content: str, title: str) -> Novel:
    """A new novel from plain text or Markdown: paragraphs are separated by blank lines; headings make chapters.

    The chapter headings are the top-level ones (`#`), except that a single leading `#` heading followed by
    deeper ones (`##`, as Longhand's own Markdown export writes) is the book's title and those are the chapters. A
    leading title heading names the novel when no title is given, and a quote right under it is the premise; text
    before the first chapter heading goes into a first chapter of its own."""
    content = content.replace("\r\n", "\n").replace("\r", "\n")
    blocks = [b.strip("\n") for b in re.split(r"\n\s*\n", content) if b.strip()]
    levels = [h[0] for h in map(_heading, blocks) if h]
    book_title = ""
    if blocks and _heading(blocks[0]) and levels.count(levels[0]) == 1 and (
            len(levels) == 1 or min(levels[1:]) > levels[0]):
        book_title = _heading(blocks[0])[1]
        blocks = blocks[1:]
        levels = levels[1:]
    premise = ""
    if book_title and blocks and all(line.startswith(">") for line in blocks[0].splitlines()):
        # The premise, as export_markdown quotes it under the title.
        premise = "\n".join(line[1:].removeprefix(" ") for line in blocks[0].splitlines())
        blocks = blocks[1:]
    novel = store.create_novel(session, title or book_title or "Imported novel", premise=premise)
    chapter_level = min(levels) if levels else None
    chapter = store.last_chapter(session, novel.id)
    written = 0
    for block in blocks:
        heading = _heading(block)
        if heading and heading[0] == chapter_level:
            if written or chapter.title != store.FIRST_CHAPTER_TITLE or chapter.version != 1:
                chapter = chapters.add_chapter(session, novel.id, heading[1])
            else:
                chapter = chapters.rename_chapter(session, chapter.id, heading[1], expected_version=chapter.version)
            written = 0
            continue
        store.add_paragraph(session, novel.id, block, origin="imported", chapter_id=chapter.id)
        written += 1
    return novel


def read_manuscript_file(path: Path | str, max_bytes: int = MAX_IMPORT_BYTES) -> str:
    path = Path(path)
    if not path.is_file():
        raise ExchangeError(f"{path} does not exist or is not a file.")
    if path.stat().st_size > max_bytes:
        raise ExchangeError(f"{path.name} is larger than the {max_bytes / 2**20:.0f} MiB import limit.")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ExchangeError(f"{path.name} is not UTF-8 text (invalid byte 0x{raw[exc.start]:02x} at offset "
                            f"{exc.start}); save it as UTF-8 and try again.") from None
