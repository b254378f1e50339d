"""The Library tab: the list of novels; create, open, rename, delete (into the trash), restore from the trash,
import and export.

Handlers are plain functions over the store; `wire()` binds them. Opening or creating a novel only sets the open
novel's id: `app.ui.build_app` chains every tab's refresh after it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import gradio as gr

from app.engine.settings import check_stored, settings_notice
from app.ui import services
from app.ui.common import (
    MAX_PREMISE_CHARS,
    MAX_SHORT_CHARS,
    InputError,
    bind,
    clean_text,
    components,
    escape,
    handler,
    require_novel,
    returns,
)
from app.ui.settings import check_model, load_settings, new_novel_defaults
from memory import backup, trash

EXPORT_FORMATS = {"JSON (re-importable)": "json", "Markdown": "md", "Plain text": "txt", "EPUB": "epub"}
IMPORT_SUFFIXES = [".json", ".md", ".txt"]
DOWNLOAD_PREFIX = "longhand-export-"
DOWNLOAD_MAX_AGE_S = 3600
TABLE_HEADERS = ["id", "title", "words", "paragraphs", "chapters", "last edited"]
MODEL_CHOICES = ["default"]


@dataclass
class LibraryTab:
    novels_table: gr.Dataframe
    novel_dropdown: gr.Dropdown
    open_btn: gr.Button
    premise_box: gr.Textbox
    genre_box: gr.Textbox
    style_box: gr.Textbox
    model_box: gr.Dropdown
    create_btn: gr.Button
    rename_box: gr.Textbox
    rename_btn: gr.Button
    delete_confirm: gr.Checkbox
    delete_btn: gr.Button
    trash_dropdown: gr.Dropdown
    restore_trash_btn: gr.Button
    empty_trash_confirm: gr.Checkbox
    empty_trash_btn: gr.Button
    export_format: gr.Radio
    export_btn: gr.Button
    export_file: gr.File
    import_file: gr.File
    import_btn: gr.Button
    status_md: gr.Markdown


# ---------------------------------------------------------------- handlers


def _summaries() -> list:
    from memory import store

    with services.current().session() as session:
        return list(store.list_novels(session))


def _field(summary, name: str, default=None):
    if isinstance(summary, dict):
        return summary.get(name, default)
    return getattr(summary, name, default)


def novel_rows() -> list[list]:
    """One row per novel: id, title, words, paragraphs, chapters, last edited (newest first)."""
    rows = []
    for summary in _summaries():
        edited = _field(summary, "last_edited") or _field(summary, "updated_at")
        rows.append([
            _field(summary, "id"), _field(summary, "title"), _field(summary, "words", 0),
            _field(summary, "paragraphs", 0), _field(summary, "chapters", 1), edited.strftime("%Y-%m-%d %H:%M") if edited else "",
        ])
    return rows


def novel_choices() -> list[tuple[str, int]]:
    return [(f"{row[1]} (#{row[0]})", row[0]) for row in novel_rows()]


def trash_choices() -> list[tuple[str, str]]:
    """(label, trash file name) per deleted novel, most recently deleted first."""
    return [(f"{item.title} (#{item.novel_id}, deleted {item.deleted:%Y-%m-%d %H:%M})", item.name)
            for item in trash.list_trash(services.current().config.trash_dir)]


@handler
@returns("novels_table", "novel_dropdown", "trash_dropdown")
def refresh(novel_id: int | None):
    """The table, the picker (with the open novel selected) and the trash."""
    choices = novel_choices()
    ids = {value for _, value in choices}
    deleted = trash_choices()
    return {
        "novels_table": gr.update(value=novel_rows_or_empty(), headers=TABLE_HEADERS),
        "novel_dropdown": gr.update(choices=choices, value=novel_id if novel_id in ids else None),
        "trash_dropdown": gr.update(choices=deleted, value=deleted[0][1] if deleted else None),
    }


def novel_rows_or_empty() -> list[list]:
    return novel_rows() or [["", "(no novels yet: create one below)", "", "", ""]]


@handler
@returns("novel_id", "status_md")
def create_novel(premise: str, genre: str, style: str, model: str) -> dict:
    """Create a novel from a premise: its id and a status line. The Write tab then streams its opening."""
    from memory import store

    premise = clean_text(premise, "The premise", required=True, max_chars=MAX_PREMISE_CHARS)
    genre = clean_text(genre, "Genre notes", max_chars=MAX_PREMISE_CHARS)
    style = clean_text(style, "Style notes", max_chars=MAX_PREMISE_CHARS)
    model = clean_text(model, "Model", max_chars=4096) or "default"
    check_model(model)
    title = premise.split("\n")[0][:60].strip() or "Untitled"
    style_notes = "\n".join(part for part in (f"Genre: {genre}" if genre else "", style) if part)
    settings = replace(new_novel_defaults(), model=model)
    with services.current().session() as session, session.begin():
        novel = store.create_novel(session, title=title, premise=premise, style_notes=style_notes,
                                   settings=settings.to_dict())
        novel_id = novel.id
    return {"novel_id": novel_id, "status_md": f"Created **{title}**. The opening is being written in the Write tab."}


@handler
@returns("novel_id", "status_md")
def open_novel(novel_id) -> dict:
    from memory import store

    novel_id = require_novel(novel_id)
    with services.current().session() as session:
        novel = store.get_novel(session, novel_id)
        title = novel.title
    _, problems = load_settings(novel_id)
    notice = f" {escape(settings_notice(problems))}" if problems else ""
    return {"novel_id": novel_id, "status_md": f"Opened **{title}**.{notice}"}


@handler
def rename_novel(novel_id, new_title: str) -> str:
    from memory import store

    novel_id = require_novel(novel_id)
    title = clean_text(new_title, "The new title", required=True, max_chars=MAX_SHORT_CHARS)
    with services.current().session() as session, session.begin():
        store.rename_novel(session, novel_id, title)
    return f"Renamed to **{title}**."


@handler
@returns("novel_id", "delete_confirm", "status_md")
def delete_novel(novel_id, confirmed: bool) -> dict:
    """Move the novel into the trash (after a backup of the whole database); needs the confirmation box ticked.
    Closes the novel. If the trash cannot be written, nothing is deleted."""
    from memory import store

    novel_id = require_novel(novel_id)
    if confirmed is not True:
        raise InputError("Tick 'Yes, delete it' first (the novel then goes to the trash below, until you empty it).")
    svc = services.current()
    with svc.session() as session:
        title = store.get_novel(session, novel_id).title
    _, trashed = backup.delete_novel_with_backup(svc.session_factory.kw["bind"], svc.session_factory,
                                                 svc.config.backups_dir, novel_id, trash_dir=svc.config.trash_dir)
    return {"novel_id": None, "delete_confirm": False,
            "status_md": f"Moved **{escape(title)}** to the trash: restore it under 'Trash' below, or with "
                         f"`python -m app trash restore {trashed.name}`."}


@handler
@returns("novel_id", "status_md")
def restore_from_trash(name) -> dict:
    """Bring a deleted novel back from the trash as a new novel (with its whole history) and open it."""
    if not name:
        raise InputError("The trash is empty, or no deleted novel is chosen.")
    svc = services.current()
    novel_id, title = trash.restore_from_trash(svc.session_factory, svc.config.trash_dir, str(name))
    return {"novel_id": novel_id, "status_md": f"Restored **{escape(title)}** from the trash."}


@handler
@returns("empty_trash_confirm", "status_md")
def empty_trash(confirmed: bool) -> dict:
    """Delete every novel in the trash for good; needs its own confirmation box ticked."""
    if confirmed is not True:
        raise InputError("Tick 'Yes, empty the trash' first: the novels in it are then gone for good.")
    removed = trash.empty_trash(services.current().config.trash_dir)
    novels = f"{len(removed)} novel{'' if len(removed) == 1 else 's'}"
    return {"empty_trash_confirm": False, "status_md": f"Emptied the trash ({novels} deleted for good)."}


def _download_dir() -> Path:
    """A fresh folder outside the data dir: Gradio copies the export from here into its cache and serves only it.

    Folders of earlier downloads older than an hour are removed on the way.
    """
    config = services.current().config
    temp_root = Path(tempfile.gettempdir())
    if temp_root.resolve().is_relative_to(config.data_dir.resolve()):
        raise InputError("The system temp folder lies inside the data folder; set TMPDIR elsewhere to download.")
    cutoff = time.time() - DOWNLOAD_MAX_AGE_S
    for old in temp_root.glob(f"{DOWNLOAD_PREFIX}*"):
        try:
            if old.is_dir() and old.stat().st_mtime < cutoff and old.stat().st_uid == os.getuid():
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            continue
    return Path(tempfile.mkdtemp(prefix=DOWNLOAD_PREFIX))


@handler
@returns("export_file", "status_md")
def export_novel(novel_id, format_label: str) -> dict:
    """Write the export into the data dir's exports folder and offer a copy of that one file for download."""
    from memory import exchange

    novel_id = require_novel(novel_id)
    fmt = EXPORT_FORMATS.get(format_label, format_label)
    if fmt not in EXPORT_FORMATS.values():
        raise InputError(f"Unknown export format {format_label!r}.")
    config = services.current().config
    config.exports_dir.mkdir(parents=True, exist_ok=True)
    with services.current().session() as session:
        saved = Path(exchange.export_to_file(session, novel_id, config.exports_dir, fmt))
    download = _download_dir() / saved.name
    shutil.copyfile(saved, download)
    return {"export_file": str(download), "status_md": f"Exported to `{saved}`; the download is below."}


@handler
@returns("novel_id", "status_md")
def import_novel(file_path) -> dict:
    """A new novel from a Longhand JSON export (everything), or from Markdown/plain text (paragraphs only)."""
    from memory import exchange

    if not file_path:
        raise InputError("Choose a file first: a Longhand .json export, or a .md or .txt manuscript.")
    path = Path(file_path if isinstance(file_path, str) else file_path.name)
    suffix = path.suffix.lower()
    if suffix not in IMPORT_SUFFIXES:
        raise InputError(f"{path.name} cannot be imported: use a Longhand .json export or a .md/.txt manuscript.")
    if suffix == ".json":
        document = exchange.read_import_file(path, check_settings=check_stored)
    else:
        content = clean_text(exchange.read_manuscript_file(path), path.name, required=True, max_chars=10_000_000)
    with services.current().session() as session, session.begin():
        if suffix == ".json":
            novel = exchange.import_json(session, document)
        else:
            novel = exchange.import_manuscript(session, content, "")
        novel_id, title = novel.id, novel.title
    return {"novel_id": novel_id, "status_md": f"Imported **{title}**."}


# ---------------------------------------------------------------- layout


def build() -> LibraryTab:
    status_md = gr.Markdown("", elem_id="library_status")
    novels_table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, label="Your novels",
                                elem_id="novels_table", max_height=320)
    with gr.Row():
        novel_dropdown = gr.Dropdown(label="Novel", choices=[], interactive=True, scale=3, elem_id="novel_dropdown")
        open_btn = gr.Button("Open", variant="primary", scale=1, elem_id="open_btn")
    with gr.Accordion("New novel", open=True):
        premise_box = gr.Textbox(label="Premise", lines=3, elem_id="premise_box",
                                 placeholder="A lighthouse keeper finds a message in a bottle addressed to her.",
                                 info="What the story is about; the model proposes a title, an opening and plans.")
        with gr.Row():
            genre_box = gr.Textbox(label="Genre notes", lines=1, elem_id="genre_box", placeholder="gothic mystery")
            style_box = gr.Textbox(label="Style notes", lines=1, elem_id="style_box",
                                   placeholder="first person, short sentences")
        model_box = gr.Dropdown(label="Model", choices=MODEL_CHOICES, value="default", allow_custom_value=True,
                                elem_id="model_box",
                                info="'default' (SmolLM2-135M, offline), a local folder or .gguf, or a server URL")
        create_btn = gr.Button("Create and write the opening", variant="primary", elem_id="create_btn")
    with gr.Accordion("Rename or delete", open=False):
        with gr.Row():
            rename_box = gr.Textbox(label="New title", scale=3, elem_id="rename_box")
            rename_btn = gr.Button("Rename", scale=1, elem_id="rename_btn")
        with gr.Row():
            delete_confirm = gr.Checkbox(label="Yes, delete it (it goes to the trash below)",
                                         value=False, elem_id="delete_confirm")
            delete_btn = gr.Button("Delete novel", variant="stop", elem_id="delete_btn")
    with gr.Accordion("Trash", open=False):
        with gr.Row():
            trash_dropdown = gr.Dropdown(label="Deleted novels", choices=[], interactive=True, scale=3,
                                         elem_id="trash_dropdown",
                                         info="kept until you empty the trash; backups rotating out never touch it")
            restore_trash_btn = gr.Button("Restore", scale=1, elem_id="restore_trash_btn")
        with gr.Row():
            empty_trash_confirm = gr.Checkbox(label="Yes, empty the trash (the novels in it are gone for good)",
                                              value=False, elem_id="empty_trash_confirm")
            empty_trash_btn = gr.Button("Empty the trash", variant="stop", elem_id="empty_trash_btn")
    with gr.Accordion("Import and export", open=False):
        with gr.Row():
            export_format = gr.Radio(list(EXPORT_FORMATS), value="Markdown", label="Export format",
                                     elem_id="export_format")
            export_btn = gr.Button("Export", elem_id="export_btn")
        export_file = gr.File(label="Download", interactive=False, elem_id="export_file")
        import_file = gr.File(label="Import a Longhand .json export, or a .md/.txt manuscript",
                              file_types=IMPORT_SUFFIXES, type="filepath",
                              elem_id="import_file")
        import_btn = gr.Button("Import", elem_id="import_btn")
    return LibraryTab(novels_table, novel_dropdown, open_btn, premise_box, genre_box, style_box, model_box,
                      create_btn, rename_box, rename_btn, delete_confirm, delete_btn, trash_dropdown,
                      restore_trash_btn, empty_trash_confirm, empty_trash_btn, export_format, export_btn,
                      export_file, import_file, import_btn, status_md)


def wire(tab: LibraryTab, novel_state: gr.State, on_novel_changed) -> None:
    """`on_novel_changed(dependency)` chains every tab's refresh after an event that changed the open novel."""
    roles = components(tab, novel_id=novel_state)
    on_novel_changed(tab.open_btn.click(inputs=[tab.novel_dropdown], **bind(open_novel, roles)))
    on_novel_changed(tab.rename_btn.click(rename_novel, [novel_state, tab.rename_box], [tab.status_md]))
    on_novel_changed(tab.delete_btn.click(inputs=[novel_state, tab.delete_confirm], **bind(delete_novel, roles)))
    on_novel_changed(tab.restore_trash_btn.click(inputs=[tab.trash_dropdown], **bind(restore_from_trash, roles)))
    on_novel_changed(tab.empty_trash_btn.click(inputs=[tab.empty_trash_confirm], **bind(empty_trash, roles)))
    tab.export_btn.click(inputs=[novel_state, tab.export_format], **bind(export_novel, roles))
    on_novel_changed(tab.import_btn.click(inputs=[tab.import_file], **bind(import_novel, roles)))
