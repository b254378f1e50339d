"""The Memory tab: the premise, style notes and outline every step reads; the short-term memory (edit, save,
history, restore); the long-term memory (every paragraph, editable in place, with a retrieval search on the path a
step uses, showing why each paragraph was found and its matching sentence in bold); and the story bible (add,
edit, remove entries).

Every save passes the version the page last read; when another tab saved first, the store's conflict message is
shown and nothing is overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from app.ui import services
from app.ui.common import (
    MAX_PREMISE_CHARS,
    MAX_SHORT_CHARS,
    InputError,
    bind,
    clean_text,
    components,
    handler,
    require_novel,
    returns,
)

PARAGRAPH_HEADERS = ["#", "text", "words"]
SEARCH_HEADERS = ["#", "score", "why", "text"]
LORE_HEADERS = ["id", "name", "keys", "always on", "body"]
NEW_ENTRY = "(new entry)"


# ---------------------------------------------------------------- premise, style notes, outline


def _story(novel_id: int) -> dict[str, str]:
    from memory import store

    with services.current().session() as session:
        return store.story(store.get_novel(session, novel_id))


@handler
@returns("story_read", "status_md")
def save_story(novel_id, premise: str, style_notes: str, outline: str, read: dict | None) -> dict:
    """Save the premise, style notes and outline if nobody changed them since the page read `read`."""
    from memory import store

    novel_id = require_novel(novel_id)
    premise = clean_text(premise, "The premise", required=True, max_chars=MAX_PREMISE_CHARS)
    style_notes = clean_text(style_notes, "The style notes", max_chars=MAX_PREMISE_CHARS)
    outline = clean_text(outline, "The outline", max_chars=MAX_PREMISE_CHARS)
    with services.current().session() as session, session.begin():
        store.edit_story(session, novel_id, premise, style_notes, outline, read or {})
    return {"story_read": _story(novel_id),
            "status_md": "Saved: the next step reads the new premise, style notes and outline."}


# ---------------------------------------------------------------- short-term memory


def _memory(novel_id: int) -> tuple[str, int, list[tuple[str, int]]]:
    from memory import store

    with services.current().session() as session:
        current = store.current_memory(session, novel_id)
        history = store.memory_history(session, novel_id)
        choices = [(f"v{m.version} · {m.origin} · {m.created_at:%Y-%m-%d %H:%M}", m.version)
                   for m in reversed(history)]
        if current is None:
            return "", 0, choices
        return current.text, current.version, choices


@handler
@returns("memory_version", "memory_history", "status_md")
def save_memory(novel_id, text: str, version) -> dict:
    """Save the edited short-term memory if nobody saved since `version` was read; returns the new version."""
    from memory import store

    novel_id = require_novel(novel_id)
    text = clean_text(text, "The short-term memory", required=True)
    with services.current().session() as session, session.begin():
        saved = store.set_memory(session, novel_id, text, expected_version=int(version or 0))
        new_version = saved.version
    _, _, choices = _memory(novel_id)
    return {"memory_version": new_version, "memory_history": gr.update(choices=choices, value=None),
            "status_md": f"Memory saved (version {new_version})."}


@handler
def show_memory_version(novel_id, chosen_version) -> str:
    from memory import store

    if chosen_version in (None, "") or novel_id in (None, ""):
        return ""
    with services.current().session() as session:
        for memory in store.memory_history(session, int(novel_id)):
            if memory.version == int(chosen_version):
                return memory.text
    raise InputError(f"Memory version {chosen_version} no longer exists.")


@handler
@returns("memory_box", "memory_version", "memory_history", "status_md")
def restore_memory(novel_id, chosen_version, version) -> dict:
    """Make an earlier version the current memory again (as a new version: nothing is lost)."""
    from memory import store

    novel_id = require_novel(novel_id)
    if chosen_version in (None, ""):
        raise InputError("Pick a version in the history first.")
    old_text = show_memory_version(novel_id, chosen_version)
    with services.current().session() as session, session.begin():
        saved = store.set_memory(session, novel_id, old_text, expected_version=int(version or 0))
        new_version = saved.version
    _, _, choices = _memory(novel_id)
    return {"memory_box": old_text, "memory_version": new_version,
            "memory_history": gr.update(choices=choices, value=None),
            "status_md": f"Restored version {chosen_version} as version {new_version}."}


# ---------------------------------------------------------------- long-term memory


def _paragraph_rows(novel_id: int) -> tuple[list[list], list[dict]]:
    from memory import store

    with services.current().session() as session:
        paragraphs = list(store.paragraphs(session, novel_id))
        rows = [[p.position, p.text, len(p.text.split())] for p in paragraphs]
        versions = [{"id": p.id, "position": p.position, "version": p.version, "text": p.text} for p in paragraphs]
    return rows, versions


def _table_rows(table) -> list[list]:
    if table is None:
        return []
    if hasattr(table, "values"):  # a pandas DataFrame
        return [list(row) for row in table.values.tolist()]
    return [list(row) for row in table]


@handler
@returns("paragraph_table", "paragraph_versions", "status_md")
def save_paragraph_edits(novel_id, table, read_versions: list[dict]) -> dict:
    """Save each paragraph whose text changed in the table, checking the version read with it."""
    novel_id = require_novel(novel_id)
    rows = _table_rows(table)
    by_position = {item["position"]: item for item in (read_versions or [])}
    changed = []
    for row in rows:
        if not row or row[0] in (None, ""):
            continue
        item = by_position.get(int(row[0]))
        if item is None:
            continue
        text = clean_text(row[1], f"Paragraph {row[0]}", required=True)
        if text != item["text"]:
            changed.append((item, text))
    if not changed:
        new_rows, versions = _paragraph_rows(novel_id)
        return {"paragraph_table": new_rows, "paragraph_versions": versions, "status_md": "No paragraph changed."}
    engine = services.current().engine()
    # One edit per transaction: each refreshes that paragraph's embedding and drops the model states after it.
    for item, text in changed:
        engine.edit_paragraph(item["id"], text, item["version"])
    new_rows, versions = _paragraph_rows(novel_id)
    numbers = ", ".join(str(item["position"]) for item, _ in changed)
    return {"paragraph_table": new_rows, "paragraph_versions": versions,
            "status_md": f"Saved paragraph {numbers}; its retrieval entry is refreshed."}


def _escape_markdown(text: str) -> str:
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_")


def _highlighted(text: str, span: tuple[int, int] | None) -> str:
    """The paragraph as Markdown with the matching sentence in bold (the text's own markup escaped)."""
    if span is None:
        return _escape_markdown(text)
    start, end = span
    return f"{_escape_markdown(text[:start])}**{_escape_markdown(text[start:end])}**{_escape_markdown(text[end:])}"


@handler
def search_memory(novel_id, query: str, k) -> list[list]:
    """What retrieval returns for `query` by the path a step uses (Engine.search_memory: best sentence plus
    paragraph, fused with the query's rare names, reranked by the language model): the top-k paragraphs with their
    score, why each was found, and the matching sentence in bold; a last row says when the LM rerank was skipped."""
    novel_id = require_novel(novel_id)
    query = clean_text(query, "The search query", required=True, max_chars=5000)
    found = services.current().engine().search_memory(novel_id, query, int(k or 5))
    rows = [[hit.paragraph.position, round(float(hit.score), 4), hit.why(),
             _highlighted(hit.paragraph.text, hit.sentence_span)] for hit in found.hits]
    rows = rows or [["", "", "", "(no paragraphs yet)"]]
    return rows + ([["", "", found.notice, ""]] if found.notice else [])


# ---------------------------------------------------------------- story bible


def _lore(novel_id: int) -> tuple[list[list], list[tuple[str, int]]]:
    from memory import store

    with services.current().session() as session:
        entries = list(store.lore_entries(session, novel_id))
        rows = [[e.id, e.name, ", ".join(e.keys), "yes" if e.always_on else "", e.body] for e in entries]
        choices = [(NEW_ENTRY, 0)] + [(f"{e.name} (#{e.id})", e.id) for e in entries]
    return rows, choices


EMPTY_EDITOR = {"lore_name": "", "lore_keys": "", "lore_body": "", "lore_always_on": False, "lore_version": 0}


@handler
@returns(*EMPTY_EDITOR)
def pick_lore(novel_id, entry_id) -> dict:
    """Fill the editor with an entry (or empty it for a new one)."""
    from memory import store

    if entry_id in (None, "", 0) or novel_id in (None, ""):
        return dict(EMPTY_EDITOR)
    with services.current().session() as session:
        entry = store.get_lore(session, int(entry_id))
        return {"lore_name": entry.name, "lore_keys": ", ".join(entry.keys), "lore_body": entry.body,
                "lore_always_on": entry.always_on, "lore_version": entry.version}


def _keys(text: str) -> list[str]:
    keys = [key.strip() for key in clean_text(text, "Keys", max_chars=5000).split(",")]
    return [key for key in keys if key]


@handler
@returns("lore_table", "lore_pick", "lore_version", "status_md")
def save_lore(novel_id, entry_id, name: str, keys: str, body: str, always_on: bool, version):
    """Add a new entry, or save the picked one (checking its version)."""
    from memory import store

    novel_id = require_novel(novel_id)
    name = clean_text(name, "The entry's name", required=True, max_chars=MAX_SHORT_CHARS)
    body = clean_text(body, "The entry's text", required=True)
    key_list = _keys(keys)
    if not key_list and not always_on:
        raise InputError("Give the entry at least one key (a word that triggers it) or tick 'always on'.")
    with services.current().session() as session, session.begin():
        if entry_id in (None, "", 0):
            entry = store.add_lore(session, novel_id, name=name, keys=key_list, body=body, always_on=bool(always_on))
            message = f"Added **{name}** to the story bible."
        else:
            entry = store.edit_lore(session, int(entry_id), expected_version=int(version or 0), name=name,
                                      keys=key_list, body=body, always_on=bool(always_on))
            message = f"Saved **{name}**."
        new_id, new_version = entry.id, entry.version
    rows, choices = _lore(novel_id)
    return {"lore_table": rows, "lore_pick": gr.update(choices=choices, value=new_id), "lore_version": new_version,
            "status_md": message}


@handler
@returns("lore_table", "lore_pick", *EMPTY_EDITOR, "status_md")
def remove_lore(novel_id, entry_id):
    from memory import store

    novel_id = require_novel(novel_id)
    if entry_id in (None, "", 0):
        raise InputError("Pick the entry to remove first.")
    with services.current().session() as session, session.begin():
        store.delete_lore(session, int(entry_id))
    rows, choices = _lore(novel_id)
    return {"lore_table": rows, "lore_pick": gr.update(choices=choices, value=0), **EMPTY_EDITOR,
            "status_md": "Entry removed."}


# ---------------------------------------------------------------- refresh


@handler
@returns("memory_box", "memory_version", "memory_history", "history_preview", "paragraph_table", "paragraph_versions",
         "lore_table", "lore_pick", "premise_box", "style_box", "outline_box", "story_read")
def refresh(novel_id):
    if novel_id in (None, ""):
        return {"memory_box": "", "memory_version": 0, "memory_history": gr.update(choices=[], value=None),
                "history_preview": "", "paragraph_table": [], "paragraph_versions": [], "lore_table": [],
                "lore_pick": gr.update(choices=[(NEW_ENTRY, 0)], value=0), "premise_box": "", "style_box": "",
                "outline_box": "", "story_read": {}}
    novel_id = int(novel_id)
    text, version, history = _memory(novel_id)
    rows, versions = _paragraph_rows(novel_id)
    lore_rows, lore_choices = _lore(novel_id)
    story = _story(novel_id)
    return {"memory_box": text, "memory_version": version, "memory_history": gr.update(choices=history, value=None),
            "history_preview": "", "paragraph_table": rows, "paragraph_versions": versions, "lore_table": lore_rows,
            "lore_pick": gr.update(choices=lore_choices, value=0), "premise_box": story["premise"],
            "style_box": story["style_notes"], "outline_box": story["outline"], "story_read": story}


# ---------------------------------------------------------------- layout


@dataclass
class MemoryTab:
    memory_box: gr.Textbox
    memory_version: gr.State
    save_memory_btn: gr.Button
    memory_history: gr.Dropdown
    history_preview: gr.Textbox
    restore_memory_btn: gr.Button
    paragraph_table: gr.Dataframe
    paragraph_versions: gr.State
    save_paragraphs_btn: gr.Button
    search_box: gr.Textbox
    search_k: gr.Slider
    search_btn: gr.Button
    search_results: gr.Dataframe
    lore_table: gr.Dataframe
    lore_pick: gr.Dropdown
    lore_name: gr.Textbox
    lore_keys: gr.Textbox
    lore_body: gr.Textbox
    lore_always_on: gr.Checkbox
    lore_version: gr.State
    save_lore_btn: gr.Button
    remove_lore_btn: gr.Button
    status_md: gr.Markdown
    premise_box: gr.Textbox
    style_box: gr.Textbox
    outline_box: gr.Textbox
    story_read: gr.State  # the premise, style notes and outline as the page read them (for the conflict check)
    save_story_btn: gr.Button


def build() -> MemoryTab:
    status_md = gr.Markdown("", elem_id="memory_status")
    memory_version = gr.State(0)
    paragraph_versions = gr.State([])
    lore_version = gr.State(0)
    story_read = gr.State({})
    with gr.Accordion("Premise, style notes and outline", open=False):
        premise_box = gr.Textbox(label="Premise", lines=3, elem_id="story_premise",
                                 info="what the novel is about; every step reads it")
        style_box = gr.Textbox(label="Style notes", lines=2, elem_id="story_style",
                               info="voice, genre, tense, anything the prose should follow")
        outline_box = gr.Textbox(label="Outline", lines=5, elem_id="story_outline",
                                 info="proposed with the opening; rewrite it to steer where the story goes")
        save_story_btn = gr.Button("Save premise, style and outline", elem_id="save_story_btn")
    with gr.Accordion("Short-term memory", open=True):
        memory_box = gr.Textbox(label="Short-term memory (the running summary the next step reads)", lines=6,
                                elem_id="memory_box")
        save_memory_btn = gr.Button("Save memory", variant="primary", elem_id="save_memory_btn")
        with gr.Row():
            memory_history = gr.Dropdown([], label="History", elem_id="memory_history", scale=2)
            restore_memory_btn = gr.Button("Restore this version", elem_id="restore_memory_btn", scale=1)
        history_preview = gr.Textbox(label="That version", lines=3, interactive=False, elem_id="history_preview")
    with gr.Accordion("Long-term memory: every paragraph", open=False):
        paragraph_table = gr.Dataframe(headers=PARAGRAPH_HEADERS, datatype=["number", "str", "number"],
                                       interactive=True, static_columns=[0, 2], wrap=True, max_height=420,
                                       column_widths=["4em", "85%", "5em"],
                                       label="Edit a paragraph's text in place, then save", elem_id="paragraph_table")
        save_paragraphs_btn = gr.Button("Save paragraph edits", elem_id="save_paragraphs_btn")
        with gr.Row():
            search_box = gr.Textbox(label="What would retrieval find for…", scale=3, elem_id="search_box")
            search_k = gr.Slider(1, 20, value=5, step=1, label="top-k", scale=1)
            search_btn = gr.Button("Search", scale=1, elem_id="search_btn")
        search_results = gr.Dataframe(headers=SEARCH_HEADERS, interactive=False, wrap=True,
                                      datatype=["number", "number", "str", "markdown"],
                                      column_widths=["5%", "8%", "22%", "65%"],
                                      label="Retrieved paragraphs (fused rank score; the matching sentence in "
                                            "bold)",
                                      elem_id="search_results")
    with gr.Accordion("Story bible", open=False):
        lore_table = gr.Dataframe(headers=LORE_HEADERS, interactive=False, wrap=True, elem_id="lore_table")
        lore_pick = gr.Dropdown([(NEW_ENTRY, 0)], value=0, label="Entry", elem_id="lore_pick")
        with gr.Row():
            lore_name = gr.Textbox(label="Name", elem_id="lore_name")
            lore_keys = gr.Textbox(label="Keys", info="comma-separated words that bring this entry into the context",
                                   elem_id="lore_keys")
            lore_always_on = gr.Checkbox(label="Always on", info="in every step's context", elem_id="lore_always_on")
        lore_body = gr.Textbox(label="Text", lines=4, elem_id="lore_body")
        with gr.Row():
            save_lore_btn = gr.Button("Save entry", variant="primary", elem_id="save_lore_btn")
            remove_lore_btn = gr.Button("Remove entry", variant="stop", elem_id="remove_lore_btn")
    return MemoryTab(memory_box, memory_version, save_memory_btn, memory_history, history_preview,
                     restore_memory_btn, paragraph_table, paragraph_versions, save_paragraphs_btn, search_box,
                     search_k, search_btn, search_results, lore_table, lore_pick, lore_name, lore_keys, lore_body,
                     lore_always_on, lore_version, save_lore_btn, remove_lore_btn, status_md, premise_box,
                     style_box, outline_box, story_read, save_story_btn)


def wire(tab: MemoryTab, novel_state: gr.State, on_novel_changed) -> None:
    roles = components(tab)
    tab.save_story_btn.click(inputs=[novel_state, tab.premise_box, tab.style_box, tab.outline_box, tab.story_read],
                             **bind(save_story, roles))
    tab.save_memory_btn.click(inputs=[novel_state, tab.memory_box, tab.memory_version], **bind(save_memory, roles))
    tab.memory_history.input(show_memory_version, [novel_state, tab.memory_history], [tab.history_preview])
    tab.restore_memory_btn.click(inputs=[novel_state, tab.memory_history, tab.memory_version],
                                 **bind(restore_memory, roles))
    on_novel_changed(tab.save_paragraphs_btn.click(
        inputs=[novel_state, tab.paragraph_table, tab.paragraph_versions], **bind(save_paragraph_edits, roles)))
    tab.search_btn.click(search_memory, [novel_state, tab.search_box, tab.search_k], [tab.search_results])
    tab.search_box.submit(search_memory, [novel_state, tab.search_box, tab.search_k], [tab.search_results])
    tab.lore_pick.input(inputs=[novel_state, tab.lore_pick], **bind(pick_lore, roles))
    lore_fields = [tab.lore_name, tab.lore_keys, tab.lore_body, tab.lore_always_on]
    tab.save_lore_btn.click(inputs=[novel_state, tab.lore_pick, *lore_fields, tab.lore_version],
                            **bind(save_lore, roles))
    tab.remove_lore_btn.click(inputs=[novel_state, tab.lore_pick], **bind(remove_lore, roles))
