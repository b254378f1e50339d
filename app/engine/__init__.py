"""The writing engine: RecurrentGPT's loop over the store (memory/) and a model (models/), with no Gradio import.

Inside: core.py (`Engine`: the orchestration of start, step, retry, auto, choose, undo, redo and the commit of a
`StepDraft`), versions.py (rewrites on request, picking, applying and dropping kept versions of a paragraph), reading.py (what a step reads from the store: the view, the context inputs, the retrieval query),
stages.py (the model stages: title and outline, paragraph, memory, plans, choice), context.py (the prompt within
its token budget), parsing.py and text.py (checking each answer), prompts.py, settings.py, events.py, strategies.py
(the manuscript-state strategy), editing.py (the writer's manuscript edits), premises.py and errors.py
(`EngineError`).

The UI, the CLI (`python -m app write`) and the tests all drive this one API:

    engine = app.wiring.open_parts(config).engine()   # each step resolves the novel's own model (the UI)
    engine = Engine(session_factory, generator, embedder, snapshot_store=None, prompts_dir=PROMPTS_DIR,
                    models=None)                       # one generator for every novel (the CLI, benchmarks, tests)

    engine.start(novel_id, *, cancel=None, mode=None, propose_title=None) -> Iterator[Event]  (title, outline, opening)
    engine.step(novel_id, plan=None, *, plan_index=None, cancel=None, mode=None) -> Iterator[Event]
    engine.retry(novel_id, *, cancel=None, mode=None)               -> Iterator[Event]  (new versions of the last
                                                                       step; the old one kept beside it)
    engine.another_version(novel_id, *, cancel=None, mode=None)     -> Iterator[Event]  (one more, kept beside it)
    engine.rewrite(novel_id, paragraph_id, instruction, *, cancel=None) -> Iterator[Event]  (app/engine/versions.py)
    engine.pick_version(alternative_id, expected_version) / apply_pending(alternative_id) / drop_version(id)
    engine.auto_write(novel_id, steps, *, cancel=None, mode=None)   -> Iterator[Event]  (model picks each plan)
    engine.choose(novel_id, choice, *, cancel=None)                 -> Iterator[Event]  (interactive fiction)
    engine.reader_view(novel_id)                                    -> ReaderView(title, paragraphs, choices)
    engine.inspect_context(novel_id, plan=None, *, mode=None)       -> ContextPreview (generates nothing)
    engine.edit_paragraph(paragraph_id, text, expected_version)     -> EditOutcome (re-embedded, snapshots dropped)
    engine.editor.edit / add / delete / move / split / merge(...)   -> EditOutcome (the writer's manuscript edits,
                                                                       app/engine/editing.py; one revision each)
    engine.update_memory(novel_id, *, cancel=None)                  -> Iterator[Event]  (memory catches up with
                                                                       every paragraph changed since its update)
    engine.undo(novel_id) / engine.redo(novel_id)                   -> bool (also drops stale snapshots)
    engine.set_mode(novel_id, "write" | "interactive");  engine.strategy -> "prompt-only" | "manuscript-state"

Events (`app.engine.events`: `Event.kind` is an `EventKind`): progress (text; done/total in auto mode), token (text
piece of the paragraph), reset (drop the streamed paragraph: a retry follows), paragraph (the final paragraph text),
memory (text), plans (.plans), notice (a fallback or repair to show), done (.outcome: StepOutcome).
`status_line(event)` is the one line each means (the UI, the CLI and the benchmarks all show it); `StepProgress`
folds them. The generators' return value is the StepOutcome too. A step commits only after its last event but
`done`; `Cancelled` (raised between tokens when `cancel` is set) and `EngineError` (one line) leave the database
unchanged; `memory.errors.ConflictError` means the novel changed in another tab meanwhile. ContextPreview: stage,
strategy, sections [Section(name, text, tokens, kept, truncated)], budget, total_tokens, prompt_text (the exact text sent), dropped, plan, manuscript_tokens.

Per-novel settings: `app.engine.settings.NovelSettings` (its fields, defaults and ranges are the one list; stored
settings with bad values are read with the defaults for those and a `notice` event on every step). Prompts are
the files in prompts/, one per stage. The UI's Undo/Redo should call engine.undo/redo (not memory.revisions directly) so that recurrent-state
snapshots of changed paragraphs are dropped.
"""

from models.errors import Cancelled

from app.engine.context import MANUSCRIPT_STATE, PROMPT_ONLY, ContextPreview, ContextTooLargeError, Section
from app.engine.core import Engine, EngineError, ReaderView, StepOutcome
from app.engine.events import Event, EventKind, StepProgress, status_line
from app.engine.prompts import PROMPTS_DIR, PromptLibrary, TemplateError
from app.engine.settings import DEFAULT_PENALTIES, MODES, NovelSettings, SettingsError

__all__ = [
    "Cancelled", "ContextPreview", "ContextTooLargeError", "DEFAULT_PENALTIES", "Engine", "EngineError", "Event",
    "EventKind", "MANUSCRIPT_STATE", "MODES", "NovelSettings", "PROMPTS_DIR", "PROMPT_ONLY", "PromptLibrary", "ReaderView",
    "Section", "SettingsError", "StepOutcome", "StepProgress", "TemplateError", "status_line",
]
