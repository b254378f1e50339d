"""The Engine's orchestration: one RecurrentGPT step (paragraph, memory, plans) from the store, through the model,
back to the store; start, step, retry, another version, auto-write, choose, undo, redo and the commit.

A step may write several versions of its paragraph (the novel's `candidates` setting), each with its own memory
and plans: the first goes in the manuscript, the others are kept beside it (memory/alternatives.py). Retry writes
new versions of the last step's paragraph from the inputs it was written from and swaps the first in, keeping the
old text beside it; "Another version" only keeps one beside it. A finished step the store refuses (the novel
changed meanwhile) is kept as a pending version the writer can apply or drop. Rewrites and picks:
app/engine/versions.py.

Each step reads what it needs in one short transaction (app/engine/reading.py), generates with no transaction open
(the model stages, app/engine/stages.py), and commits the paragraph, memory, plans and embedding in one transaction
(`memory.store.commit_step`, from a `StepDraft`), refusing a step whose inputs changed meanwhile. A cancelled or
failed generation writes nothing. Every model answer goes through a parser with a bounded number of attempts; after
that a visible fallback (old memory kept, stock plans) is used and said.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from memory import alternatives, rerank, retrieval, revisions, store
from memory.alternatives import Version
from memory.schema import Paragraph
from models.errors import Cancelled

from app.engine import strategies
from app.engine.chapter_outline import ChapterOutliner, chapter_plan
from app.engine.context import MANUSCRIPT_STATE, PROMPT_ONLY, ContextPreview, build_context
from app.engine.editing import EditOutcome, ManuscriptEditor
from app.engine.continuity import MODE_VOICES
from app.engine.errors import EngineError
from app.engine.events import Event
from app.engine.prompts import PROMPTS_DIR, PromptLibrary
from app.engine.reading import NovelView, StoreReader
from app.engine.rerank import lm_scorer
from app.engine.settings import MODES
from app.engine.stages import FALLBACK_PLANS, ModelStages
from app.engine.strategies import ManuscriptState
from app.engine.summaries import Summarizer
from app.engine.versions import VersionsMixin

__all__ = ["Engine", "EngineError", "ReaderView", "StepDraft", "StepOutcome"]


@dataclass
class StepOutcome:
    """What a committed step produced."""

    novel_id: int
    paragraph_id: int | None  # None: the new text is pending (its paragraph was deleted)
    position: int
    paragraph: str
    memory: str
    plans: list[str]
    used_plan: str
    strategy: str
    notices: list[str] = field(default_factory=list)
    title: str | None = None
    outline: str | None = None
    kept: int = 0  # versions kept beside the paragraph (or pending) by this step
    swapped: bool = True  # False: the new text was kept beside the paragraph, the manuscript did not change
    pending: bool = False  # True: the paragraph it belonged to was deleted; the new text waits to be applied


# How a draft is saved: a new step, a Retry (kept beside the last paragraph and swapped in) or "Another version"
# (kept beside it only).
COMMIT_AS = ("step", "retry", "another")
VERSION_KIND = {"step": "candidate", "retry": "retry", "another": "version"}


@dataclass
class StepDraft:
    """A step being written and not yet saved: the paragraph and how it was made, then (filled in by the memory and
    plans stages) the memory and plans; `Engine._commit` saves it in one transaction."""

    paragraph: str
    plan_text: str
    plan_index: int | None
    strategy: str
    notices: list[str]
    manuscript: ManuscriptState | None = None  # the model's state after the manuscript (manuscript-state strategy)
    commit_as: str = "step"  # one of COMMIT_AS
    title: str | None = None  # proposed by the start stage
    outline: str | None = None  # proposed by the start stage
    propose_title: bool | None = None  # None: rename only a novel whose title was derived from the premise
    memory: str = ""
    memory_origin: str = "generated"  # "extractive" when the memory stage's visible fallback wrote it
    plans: list[str] = field(default_factory=list)


@dataclass
class ReaderView:
    """Interactive fiction: the story so far as the reader sees it, and the choices for what they do next."""

    title: str
    paragraphs: list[str]
    choices: list[str]


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("stopped")


class Engine(VersionsMixin):
    """The writing engine over one store (session factory), one model (TextGenerator) and one embedder.

    With `models` (app.wiring.ModelService, or anything with `generator(model, device, dtype)`) the engine resolves
    each novel's model from the novel's own settings at every step, from what the step's one read transaction
    read; `generator` may then be None. Without it, `generator` writes every novel.
    """

    def __init__(self, session_factory, generator, embedder, snapshot_store=None,
                 prompts_dir: str | Path = PROMPTS_DIR, *, max_attempts: int | None = None, models=None,
                 lm_rerank: bool = False):
        self.session_factory = session_factory
        self.generator = generator
        self.embedder = embedder
        self.snapshot_store = snapshot_store
        self.prompts = PromptLibrary(prompts_dir)
        self.max_attempts = max_attempts
        self.models = models
        self.lm_rerank = lm_rerank  # retrieval reranked by the model (app/engine/rerank.py)

    @property
    def reader(self) -> StoreReader:
        """Reading the store (app/engine/reading.py) with this engine's session factory, embedder and, for the
        LM rerank, the scorer over its model (or why there is none)."""
        scorer, skipped = lm_scorer(getattr(self.generator, "backend", None), enabled=self.lm_rerank)
        return StoreReader(self.session_factory, self.embedder, scorer=scorer, skipped=skipped)

    @property
    def stages(self) -> ModelStages:
        """The model stages (app/engine/stages.py) over this engine's model and prompts."""
        return ModelStages(self.generator, self.prompts, self.max_attempts, embedder=self.embedder)

    def _for_novel(self, view: NovelView) -> Engine:
        """This engine over the novel's own model (its settings' model, device and dtype), when it resolves models
        itself; else itself. A copy, so a step already running keeps the model it started with; the model service
        refuses a server this launch does not allow (app.config.check_model_allowed) before anything is sent."""
        engine = self
        if self.models is not None:
            engine = copy.copy(self)
            engine.models = None
            engine.generator = self.models.generator(view.config.model, view.config.device, view.config.dtype)
        engine._tell_load_notice(view)
        return engine

    def _tell_load_notice(self, view: NovelView) -> None:
        """A model that loaded degraded (llama.cpp missing: the GGUF runs through transformers, slower) says so in
        every step's notices, which the Write tab shows, not only on the console it was printed to."""
        report = getattr(self.generator, "load_report", None)
        notice = getattr(report, "notice", "")
        if notice and notice not in view.notices:
            view.notices.append(notice)

    # ----------------------------------------------------------------------------------------------- reading

    @property
    def strategy(self) -> str:
        """`manuscript-state` when snapshots can be stored and the model's state is worth snapshotting: a
        fixed-size state (Mamba2 family, any backend) or a backend that says so (`snapshot_state`: llama.cpp's
        hybrid GGUFs, whose recurrent part cannot be re-read from a cut-back cache); else `prompt-only`.
        app/engine/strategies.py documents which family gets which."""
        backend = getattr(self.generator, "backend", None)
        wants_snapshots = getattr(backend, "fixed_size_state", False) or getattr(backend, "snapshot_state", False)
        if (self.snapshot_store is not None and getattr(self.generator, "supports_state", False)
                and wants_snapshots):
            return MANUSCRIPT_STATE
        return PROMPT_ONLY

    def search_memory(self, novel_id: int, query: str, k: int) -> rerank.Reranked:
        """What retrieval finds for `query` by the step's path (vectors fused with rare names, then the LM rerank):
        the Memory tab's search. The rerank uses the model already loaded (a search never loads one; before the
        first step the notice says it was skipped). The hits' paragraphs stay readable after it returns."""
        generator = self.models.loaded_generator() if self.models is not None else self.generator
        scorer, skipped = lm_scorer(getattr(generator, "backend", None), enabled=self.lm_rerank)
        vector = self.reader.query_vector(query)
        with self.session_factory() as session:
            hits = retrieval.search(session, novel_id, vector, rerank.search_depth(k, query, scorer), text=query)
        return rerank.finish(hits, query, scorer, k=k, skipped=skipped)  # the model reads outside the session

    def _read(self, novel_id: int, *, for_retry: bool = False) -> NovelView:
        """Everything a step starts from, in one transaction (app/engine/reading.py StoreReader.read)."""
        return self.reader.read(novel_id, for_retry=for_retry)

    @staticmethod
    def _paragraph_stage(view: NovelView, strategy: str, opening: bool = False) -> str:
        """The template of the paragraph prompt: the instruction (opening, paragraph) or the document strategy's
        (continue_*) by the novel's `paragraph_prompt`; the manuscript-state strategy reads the manuscript itself,
        so it always takes the instruction's control block."""
        document = str(view.setting("paragraph_prompt")) == "document" and strategy == PROMPT_ONLY
        name = "opening" if opening else "paragraph"
        return f"continue_{name}" if document else name

    def _budget(self, view: NovelView) -> int:
        window = int(getattr(self.generator, "context_window", 0) or 0)
        budget = int(view.setting("context_tokens"))
        if window > 0:
            budget = min(budget, window)
        return budget - int(view.setting("max_new_tokens"))

    def _mode(self, view: NovelView, mode: str | None) -> str:
        mode = mode or str(view.setting("mode"))
        if mode not in MODES:
            raise EngineError(f"Unknown mode {mode!r}: use one of {', '.join(MODES)}.")
        return mode

    def inspect_context(self, novel_id: int, plan: str | None = None, *, mode: str | None = None) -> ContextPreview:
        """The exact prompt the next step would send with `plan` (default: the first proposed plan), with the token
        count of each section, the budget and what was dropped to fit it. Generates nothing."""
        view = self._read(novel_id)
        mode = self._mode(view, mode)
        return self._for_novel(view)._inspect(view, plan, mode)

    def _inspect(self, view: NovelView, plan: str | None, mode: str) -> ContextPreview:
        if not view.paragraphs:
            return self._opening_context(view, mode)
        plan = (plan or "").strip() or (view.plans[0] if view.plans else "")
        if not plan:
            raise EngineError("There is no plan to inspect: write an instruction for the next paragraph.")
        strategy = self.strategy
        preview = build_context(self.prompts, self.generator, self.reader.step_inputs(view, plan, mode, strategy),
                                self._budget(view), stage=self._paragraph_stage(view, strategy), strategy=strategy)
        if strategy == MANUSCRIPT_STATE:
            preview.manuscript_tokens = sum(self.generator.count_tokens(text + "\n\n") for _, text in view.paragraphs)
        return preview

    def _opening_context(self, view: NovelView, mode: str) -> ContextPreview:
        return build_context(self.prompts, self.generator, self.reader.opening_inputs(view, mode),
                             self._budget(view), stage=self._paragraph_stage(view, PROMPT_ONLY, opening=True),
                             strategy=PROMPT_ONLY)

    def reader_view(self, novel_id: int) -> ReaderView:
        """Interactive fiction: the paragraphs so far and the plans offered as the reader's choices."""
        view = self._read(novel_id)
        return ReaderView(view.title, [text for _, text in view.paragraphs], view.plans)

    # ----------------------------------------------------------------------------------------------- steps

    def start(self, novel_id: int, *, cancel: threading.Event | None = None, mode: str | None = None,
              propose_title: bool | None = None) -> Iterator[Event]:
        """Open a novel that has a premise and no paragraphs: propose a title and outline, write the first
        paragraph, the first memory and three plans, and commit them. The title replaces the novel's only when it
        was derived from the premise (or `propose_title=True`)."""
        view = self._read(novel_id)
        return (yield from self._for_novel(view)._start(view, cancel, mode, propose_title))

    def _start(self, view: NovelView, cancel, mode: str | None, propose_title: bool | None) -> Iterator[Event]:
        if view.paragraphs:
            raise EngineError("This novel already has paragraphs: use Next step (start is for a new novel).")
        if not view.premise.strip():
            raise EngineError("Write a premise first: the opening is written from it.")
        mode = self._mode(view, mode)
        notices: list[str] = list(view.notices)
        yield Event("progress", "Proposing a title and an outline…")
        title: str | None = None
        outline = str(view.settings.get("outline") or "")
        if not outline:
            title, outline = self.stages.title_outline(view, cancel, notices)
            view.settings["outline"] = outline
        yield Event("progress", "Writing the opening…")
        return (yield from self._write_opening(view, mode, cancel, notices,
                                               title=title, outline=outline, propose_title=propose_title))

    def _write_opening(self, view: NovelView, mode: str, cancel, notices: list[str], *, commit_as: str = "step",
                       count: int | None = None, title: str | None = None, outline: str | None = None,
                       propose_title: bool | None = None) -> Iterator[Event]:
        """Stream the opening paragraph (each version of it) from the premise, then finish the step."""
        preview = self._opening_context(view, mode)

        def one_version() -> Iterator[Event]:
            paragraph = yield from self._stream_paragraph(view, preview, cancel, notices, mode=mode)
            return StepDraft(paragraph=paragraph, plan_text="(the opening)", plan_index=None, strategy=PROMPT_ONLY,
                             notices=notices, commit_as=commit_as, title=title, outline=outline,
                             propose_title=propose_title)

        return (yield from self._write_versions(view, cancel, one_version, count))

    def _write_versions(self, view: NovelView, cancel, one_version, count: int | None) -> Iterator[Event]:
        """`count` versions (default: the novel's `candidates` setting), each with its memory and plans, then the
        commit of all of them. Nothing is saved before the last one is finished."""
        count = int(view.setting("candidates")) if count is None else count
        drafts: list[StepDraft] = []
        for number in range(count):
            if count > 1:
                yield Event("reset", f"Writing version {number + 1} of {count}…")
            draft = yield from one_version()
            yield from self._memory_and_plans(view, draft, cancel)
            drafts.append(draft)
        return (yield from self._finish(view, drafts, cancel))

    def step(self, novel_id: int, plan: str | None = None, *, plan_index: int | None = None,
             cancel: threading.Event | None = None, mode: str | None = None) -> Iterator[Event]:
        """Write the next paragraph from `plan` (any text: a proposed plan, rewritten or not, or the writer's own),
        or from proposed plan number `plan_index` (0-based). Commits the paragraph, the updated memory and the next
        three plans in one transaction; a novel without paragraphs is started instead. Everything the step starts
        from (the novel, its settings and so its model, the manuscript, memory and plans) is read in one
        transaction."""
        view = self._read(novel_id)
        engine = self._for_novel(view)
        if not view.paragraphs:
            return (yield from engine._start(view, cancel, mode, None))
        plan_text, plan_index = engine._resolve_plan(view, plan, plan_index)
        return (yield from engine._step(view, plan_text, plan_index, cancel, engine._mode(view, mode)))

    def _resolve_plan(self, view: NovelView, plan: str | None, plan_index: int | None) -> tuple[str, int | None]:
        plan = (plan or "").strip()
        if plan_index is not None:
            if not 0 <= plan_index < len(view.plans):
                raise EngineError(f"There is no plan {plan_index + 1}: {len(view.plans)} plan(s) are proposed.")
            return (plan or view.plans[plan_index]), plan_index
        if not plan:
            raise EngineError("The instruction is empty: choose a plan or write your own instruction for the next "
                              "paragraph.")
        matches = [i for i, proposed in enumerate(view.plans) if proposed.strip() == plan]
        return plan, (matches[0] if matches else None)

    def _step(self, view: NovelView, plan_text: str, plan_index: int | None, cancel, mode: str,
              commit_as: str = "step", count: int | None = None) -> Iterator[Event]:
        strategy = self.strategy
        notices: list[str] = list(view.notices)
        yield from self.reader.backfill_sentences(view)
        yield Event("progress", f"Building the context ({strategy})…")
        preview = build_context(self.prompts, self.generator, self.reader.step_inputs(view, plan_text, mode, strategy),
                                self._budget(view), stage=self._paragraph_stage(view, strategy), strategy=strategy)
        if preview.dropped:
            notices.append("To fit the context budget, left out: " + ", ".join(preview.dropped) + ".")
        manuscript = None
        if strategy == MANUSCRIPT_STATE:
            yield Event("progress", "Restoring the model's state after the manuscript…")
            manuscript = self._manuscript_state(view, cancel)
        yield Event("progress", "Writing the paragraph…")

        def one_version() -> Iterator[Event]:
            paragraph = yield from self._stream_paragraph(view, preview, cancel, notices, mode=mode,
                                                          state=manuscript.state if manuscript is not None else None)
            return StepDraft(paragraph=paragraph, plan_text=plan_text, plan_index=plan_index, strategy=strategy,
                             notices=notices, manuscript=manuscript, commit_as=commit_as)

        return (yield from self._write_versions(view, cancel, one_version, count))

    def _stream_paragraph(self, view: NovelView, preview: ContextPreview, cancel, notices: list[str], *,
                          mode: str, state=None, lengthen: bool = True) -> Iterator[Event]:
        """The paragraph stage's events, passed on (checked for the voice `mode` asks for; a short one continued
        unless `lengthen` is off); returns the paragraph."""
        paragraph = ""
        for event in self.stages.paragraph(view, preview, cancel, notices, state=state, voice=MODE_VOICES[mode],
                                           lengthen=lengthen):
            if event.kind == "paragraph":
                paragraph = event.text
            yield event
        return paragraph

    def _memory_and_plans(self, view: NovelView, draft: StepDraft, cancel) -> Iterator[Event]:
        """The memory and plans stages after one version of the paragraph, filled into `draft`."""
        yield Event("progress", "Updating the memory…")
        draft.memory, draft.memory_origin = self.stages.memory(view, draft.paragraph, cancel, draft.notices)
        yield Event("memory", draft.memory)
        yield Event("progress", "Proposing three plans…")
        draft.plans = self.stages.plans(view, draft.memory, draft.paragraph, cancel, draft.notices)
        yield Event("plans", plans=draft.plans)

    def _finish(self, view: NovelView, drafts: list[StepDraft], cancel) -> Iterator[Event]:
        """The commit of a step's versions (and the state snapshot after the one in the manuscript)."""
        first = drafts[0]
        for notice in first.notices:
            yield Event("notice", notice)
        _check_cancel(cancel)
        embedding = self.reader.passage_vector(first.paragraph)
        shown = len(first.notices)
        outcome = self._commit(view, drafts, embedding)
        for notice in outcome.notices[shown:]:
            yield Event("notice", notice)
        if first.manuscript is not None and outcome.swapped and not outcome.pending:
            if first.commit_as != "step":
                self._invalidate_snapshots(view.novel_id, outcome.position)
            self._save_snapshot(view, first.manuscript, first.paragraph, outcome.position)
        yield Event("done", _done_line(first.commit_as, outcome), outcome=outcome)
        return outcome

    def _commit(self, view: NovelView, drafts: list[StepDraft], embedding) -> StepOutcome:
        """Save `drafts` in one transaction: a new step (refused with ConflictError when the novel changed since
        `view` was read, its versions then kept as pending), or new versions of the last paragraph."""
        first = drafts[0]
        if first.commit_as != "step":
            return self._commit_versions(view, drafts, embedding)
        try:
            with self.session_factory() as session, session.begin():
                new_title = self._apply_title_outline(session, view, first)
                result = store.commit_step(session, view.novel_id, first.paragraph, first.memory, first.plans,
                                           first.plan_index, first.plan_text, embedding,
                                           expected_memory_version=view.memory_version,
                                           expected_paragraph_count=view.count, memory_origin=first.memory_origin)
                alternatives.attach_to_revision(session, result.revision, result.paragraph,
                                                [_version(draft) for draft in drafts[1:]])
                return self._outcome(view, first, result.paragraph.id, result.paragraph.position,
                                     title=new_title, kept=len(drafts) - 1)
        except store.ConflictError as exc:
            position = view.count + 1
            with self.session_factory() as session, session.begin():
                alternatives.keep_pending(session, view.novel_id, position, [_version(draft) for draft in drafts])
            raise store.ConflictError(f"{exc} Its paragraph is kept as a pending version for position {position}: "
                                      "apply or drop it under Versions in the Write tab.",
                                      current_version=exc.current_version) from None

    def _commit_versions(self, view: NovelView, drafts: list[StepDraft], embedding) -> StepOutcome:
        """Retry or "Another version": keep the drafts beside the paragraph they are versions of; a Retry swaps
        the first in when that paragraph is still as it was read. A paragraph deleted meanwhile: kept pending."""
        first = drafts[0]
        versions = [_version(draft) for draft in drafts]
        position = view.count + 1
        with self.session_factory() as session, session.begin():
            paragraph = session.get(Paragraph, view.retry_paragraph_id)
            if paragraph is None:
                alternatives.keep_pending(session, view.novel_id, position, versions)
                first.notices.append(f"Paragraph {position} was deleted while its new version was written: the "
                                     "new version is kept pending; apply or drop it under Versions.")
                return self._outcome(view, first, None, position, kept=len(drafts), swapped=False, pending=True)
            rows = alternatives.keep_many(session, paragraph.id, versions)
            swapped = first.commit_as == "retry" and paragraph.version == view.retry_paragraph_version
            if first.commit_as == "retry" and not swapped:
                first.notices.append(f"Paragraph {paragraph.position} was edited while its new version was "
                                     "written: the new version is kept beside it, not swapped in.")
            if swapped:
                picked = alternatives.pick(session, rows[0].id, paragraph.version, embedding)
                if not picked.memory_followed:
                    first.notices.append("The memory and plans were edited since that step, so they were left as "
                                         "they are: update them in the Memory tab if the new version needs it.")
            return self._outcome(view, first, paragraph.id, paragraph.position,
                                 kept=len(drafts) - (1 if swapped else 0), swapped=swapped)

    @staticmethod
    def _outcome(view: NovelView, draft: StepDraft, paragraph_id: int | None, position: int, *,
                 title: str | None = None, kept: int = 0, swapped: bool = True, pending: bool = False) -> StepOutcome:
        return StepOutcome(novel_id=view.novel_id, paragraph_id=paragraph_id, position=position,
                           paragraph=draft.paragraph, memory=draft.memory, plans=draft.plans,
                           used_plan=draft.plan_text, strategy=draft.strategy, notices=list(draft.notices),
                           title=title, outline=draft.outline, kept=kept, swapped=swapped, pending=pending)

    def _apply_title_outline(self, session, view: NovelView, draft: StepDraft) -> str | None:
        """Store the start stage's outline; rename the novel to its title when that was asked or the title was
        derived from the premise (else a notice proposes it). Returns the new title, if the novel was renamed."""
        novel = store.get_novel(session, view.novel_id)
        if draft.outline is not None and draft.outline != (novel.settings or {}).get("outline"):
            store.update_novel_settings(session, view.novel_id, {"outline": draft.outline})
        title, propose = draft.title, draft.propose_title
        derived_title = novel.title.strip() == (view.premise.split("\n")[0][:60].strip() or "Untitled")
        if title and (propose or (propose is None and derived_title)) and title != novel.title:
            store.rename_novel(session, view.novel_id, title)
            return title
        if title and title != novel.title:
            draft.notices.append(f"Proposed title: {title!r} (rename the novel in the Library to use it).")
        return None

    def retry(self, novel_id: int, *, cancel: threading.Event | None = None,
              mode: str | None = None) -> Iterator[Event]:
        """Rewrite the last step from the same inputs (the manuscript, memory and plan it was written from), as
        many versions as a step writes; the first replaces the paragraph in the manuscript and the text it replaced
        is kept beside it (Undo swaps back; the new versions stay kept)."""
        return (yield from self._new_version(novel_id, cancel, mode, commit_as="retry"))

    def another_version(self, novel_id: int, *, cancel: threading.Event | None = None,
                        mode: str | None = None) -> Iterator[Event]:
        """One more version of the last step's paragraph from the same inputs as Retry, kept beside it; the
        manuscript does not change (pick it under Versions)."""
        return (yield from self._new_version(novel_id, cancel, mode, commit_as="another"))

    def _new_version(self, novel_id: int, cancel, mode: str | None, *, commit_as: str) -> Iterator[Event]:
        view = self._read(novel_id, for_retry=True)
        mode = self._mode(view, mode)
        engine = self._for_novel(view)
        count = None if commit_as == "retry" else 1
        if not view.paragraphs:
            return (yield from engine._write_opening(view, mode, cancel, list(view.notices), commit_as=commit_as,
                                                     count=count))
        plan_text = view.retry_plan or (view.plans[view.retry_plan_index] if view.retry_plan_index is not None
                                        else "")
        if not plan_text:
            raise EngineError("The last step has no recorded plan to rewrite from: write a new step instead.")
        return (yield from engine._step(view, plan_text, view.retry_plan_index, cancel, mode, commit_as=commit_as,
                                        count=count))

    def auto_write(self, novel_id: int, steps: int, *, cancel: threading.Event | None = None,
                   mode: str | None = None) -> Iterator[Event]:
        """Write `steps` steps, the model choosing each plan. Every finished step is committed before the next
        starts; `cancel` stops between tokens (the unfinished step is not saved). Events carry done/total."""
        if steps < 1:
            raise EngineError("Auto-write needs at least one step.")
        for done in range(steps):
            _check_cancel(cancel)
            yield Event("progress", f"Step {done + 1} of {steps}…", done=done, total=steps)
            view = self._read(novel_id)
            engine = self._for_novel(view)
            if not view.paragraphs:
                events = engine._start(view, cancel, mode, None)
            else:
                events = engine._auto_step(view, cancel, mode, done, steps)
            for event in events:
                event.done, event.total = (done + 1 if event.kind == "done" else done), steps
                yield event

    def write_chapters(self, novel_id: int, through_chapter: int, paragraphs_per_chapter: int, *,
                       cancel: threading.Event | None = None, mode: str | None = None) -> Iterator[Event]:
        """Auto-write until the end of chapter `through_chapter` (its position in the book): steps go into the open
        chapter; one that holds `paragraphs_per_chapter` paragraphs is closed (its summary and the synopsis
        written, a notice when that fails) and the next one opens. Every step and close is committed on its own."""
        if through_chapter < 1 or paragraphs_per_chapter < 1:
            raise EngineError("Write until a chapter number of 1 or more, with at least one paragraph a chapter.")
        view = self._read(novel_id)
        if view.open_chapter is None or view.open_chapter.position > through_chapter:
            raise EngineError(f"Chapter {through_chapter} is already closed: the open chapter is number "
                              f"{view.open_chapter.position if view.open_chapter else '?'}.")
        done = 0
        while True:
            _check_cancel(cancel)
            view = self._read(novel_id)
            chapter = view.open_chapter
            left = (through_chapter - chapter.position + 1) * paragraphs_per_chapter - len(chapter.paragraph_positions)
            if len(chapter.paragraph_positions) >= paragraphs_per_chapter:
                yield Event("progress", f"Closing {chapter.title!r}: writing its summary…", done=done,
                            total=done + max(left, 0))
                for outcome in self.summarizer(novel_id).close_chapter(novel_id, chapter.id, cancel=cancel):
                    if outcome.notice:
                        yield Event("notice", outcome.notice, done=done, total=done + max(left, 0))
                if chapter.position >= through_chapter:
                    return done
                continue
            engine = self._for_novel(view)
            plan = chapter_plan(str(view.settings.get("outline") or ""), chapter.position)
            if not view.paragraphs:
                events = engine._start(view, cancel, mode, None)
            elif plan and not chapter.paragraph_positions:
                # A chapter's first step follows its line of the outline by chapter.
                events = engine._step(view, plan, None, cancel, self._mode(view, mode), count=1)
            else:
                events = engine._auto_step(view, cancel, mode, done, done + left)
            for event in events:
                event.done, event.total = (done + 1 if event.kind == "done" else done), done + left
                yield event
            done += 1

    def _auto_step(self, view: NovelView, cancel, mode: str | None, done: int, steps: int) -> Iterator[Event]:
        """One auto-write step: the model picks a pending plan (or the scene continues), then the step."""
        notices: list[str] = []
        if view.plans:
            yield Event("progress", f"Step {done + 1} of {steps}: choosing a plan…", done=done, total=steps)
            index = self.stages.choose(view, cancel, notices)
            plan_text = view.plans[index]
        else:
            index, plan_text = None, FALLBACK_PLANS[0]
            notices.append("No plans were pending: the step continues the scene.")
        for notice in notices:
            yield Event("notice", notice, done=done, total=steps)
        yield Event("progress", f"Step {done + 1} of {steps}: {plan_text}", done=done, total=steps)
        return (yield from self._step(view, plan_text, index, cancel, self._mode(view, mode), count=1))

    # ----------------------------------------------------------------------------------------------- chapters

    def summarizer(self, novel_id: int) -> Summarizer:
        """Chapter summaries and the synopsis (app/engine/summaries.py) with the novel's own model."""
        engine = self._for_novel(self._read(novel_id))
        return Summarizer(self.session_factory, engine.generator, self.prompts, self.reader)

    def chapter_outliner(self, novel_id: int) -> ChapterOutliner:
        """The outline by chapter (app/engine/chapter_outline.py) with the novel's own model."""
        engine = self._for_novel(self._read(novel_id))
        return ChapterOutliner(self.session_factory, engine.generator, self.prompts, self.reader)

    def choose(self, novel_id: int, choice: int, *, cancel: threading.Event | None = None) -> Iterator[Event]:
        """Interactive fiction: the reader picks choice `choice` (0-based); it becomes the next plan."""
        return self.step(novel_id, plan_index=choice, cancel=cancel, mode="interactive")

    # ----------------------------------------------------------------------------------------------- editing

    def set_mode(self, novel_id: int, mode: str) -> None:
        """Remember the novel's mode: "write" (third person) or "interactive" (second person, plans as choices)."""
        if mode not in MODES:
            raise EngineError(f"Unknown mode {mode!r}: use one of {', '.join(MODES)}.")
        with self.session_factory() as session, session.begin():
            store.update_novel_settings(session, novel_id, {"mode": mode})

    @property
    def editor(self) -> ManuscriptEditor:
        """The writer's manuscript edits (app/engine/editing.py): edit, add, delete, move, split, merge."""
        return ManuscriptEditor(self.session_factory, self.reader, self.snapshot_store)

    def edit_paragraph(self, paragraph_id: int, text: str, expected_version: int) -> EditOutcome:
        """Replace a paragraph's text (refused with ConflictError if it changed since `expected_version`): its
        embedding is refreshed in the same transaction and the model-state snapshots from it on are dropped."""
        return self.editor.edit(paragraph_id, text, expected_version)

    def update_memory(self, novel_id: int, *, cancel: threading.Event | None = None) -> Iterator[Event]:
        """Fold every paragraph written or changed since the memory was last updated into it, streaming the new
        memory as it is written; saved as one undoable memory version, refused when the memory or those
        paragraphs changed meanwhile. Nothing to fold in: says so and saves nothing."""
        view = self._read(novel_id)
        if not view.pending:
            yield Event("done", "The memory is up to date: no paragraph was written or changed since its last "
                                "update.")
            return None
        engine = self._for_novel(view)
        positions = ", ".join(str(position) for position, _ in view.pending)
        notices = list(view.notices)
        yield Event("progress", f"Updating the memory from paragraph{'s' if len(view.pending) > 1 else ''} "
                                f"{positions}…")
        memory, origin = yield from engine.stages.catch_up(view, [text for _, text in view.pending], cancel, notices)
        for notice in notices:
            yield Event("notice", notice)
        _check_cancel(cancel)
        with self.session_factory() as session, session.begin():
            current = store.current_memory(session, novel_id)
            if current is not None and current.version == view.memory_version:
                now = [(p.id, p.version) for p in store.paragraphs_changed_since(session, novel_id,
                                                                                 current.created_at)]
                if now != view.pending_versions:
                    raise store.ConflictError("The manuscript changed while the memory was updated; nothing was "
                                              "saved: update the memory again.")
            store.set_memory(session, novel_id, memory, view.memory_version, origin=origin,
                             cause=f"updated the memory from paragraphs {positions}")
        yield Event("memory", memory)
        yield Event("done", f"Memory updated from paragraph{'s' if len(view.pending) > 1 else ''} {positions}.")
        return memory

    def undo(self, novel_id: int) -> bool:
        """Undo the last change (a whole step, or an edit), restoring paragraph, memory and plans exactly."""
        return self._history(novel_id, redo=False)

    def redo(self, novel_id: int) -> bool:
        return self._history(novel_id, redo=True)

    def _history(self, novel_id: int, *, redo: bool) -> bool:
        with self.session_factory() as session, session.begin():
            moved = (revisions.redo if redo else revisions.undo)(session, novel_id)
        if moved is None:
            return False
        if moved.first_position is not None:
            self._invalidate_snapshots(novel_id, moved.first_position)
        return True

    # ----------------------------------------------------------------------------------------------- snapshots

    def _invalidate_snapshots(self, novel_id: int, position: int) -> None:
        """Drop every state snapshot that has read paragraph `position` (they no longer match the text)."""
        if self.snapshot_store is not None:
            self.snapshot_store.delete_after(novel_id, position - 1)

    def _snapshot_policy(self, view: NovelView):
        return strategies.policy(int(view.setting("snapshot_budget_mb")) * 1_000_000,
                                 str(view.setting("snapshot_dtype")))

    def _manuscript_state(self, view: NovelView, cancel) -> ManuscriptState:
        # Through the module, so a test can wrap strategies.restore_manuscript_state to see what was restored.
        return strategies.restore_manuscript_state(self.generator, self.snapshot_store, view.novel_id,
                                                   view.paragraphs, cancel=cancel,
                                                   snapshot_policy=self._snapshot_policy(view))

    def _save_snapshot(self, view: NovelView, manuscript: ManuscriptState, paragraph: str, position: int) -> None:
        strategies.save_after_paragraph(self.generator, self.snapshot_store, view.novel_id, manuscript, paragraph,
                                        position, snapshot_policy=self._snapshot_policy(view))


def _version(draft: StepDraft) -> Version:
    """A draft as a version kept beside a paragraph, with the memory and plans its step wrote."""
    return Version(text=draft.paragraph, kind=VERSION_KIND[draft.commit_as], instruction=draft.plan_text,
                   memory=draft.memory, plans=list(draft.plans))


def _done_line(commit_as: str, outcome: StepOutcome) -> str:
    """The status line of a finished step, retry or "another version"."""
    if outcome.pending:
        return f"Kept a pending version for position {outcome.position}."
    if commit_as == "another" or not outcome.swapped:
        return f"Kept another version of paragraph {outcome.position}: pick it under Versions."
    line = f"Saved paragraph {outcome.position}."
    if commit_as == "retry":
        line += " The version it replaced is kept beside it."
    if outcome.kept:
        line += f" {outcome.kept} more version{'s' if outcome.kept > 1 else ''} kept beside it."
    return line
