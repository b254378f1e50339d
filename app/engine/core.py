"""The Engine: one RecurrentGPT step (paragraph, memory, plans) from the store, through the model, back to the store.

Each step reads what it needs in one short transaction, generates with no transaction open, and commits the
paragraph, memory, plans and embedding in one transaction (`memory.store.commit_step`), refusing a step whose
inputs changed meanwhile. A cancelled or failed generation writes nothing. Every model answer goes through a parser
with a bounded number of attempts; after that a visible fallback (old memory kept, stock plans) is used and said.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select

from memory import embeddings, retrieval, revisions, store
from memory.embeddings import Vector
from memory.schema import PlanSet
from models.errors import Cancelled

from app.engine import strategies
from app.engine.context import (
    MANUSCRIPT_STATE,
    PROMPT_ONLY,
    ContextInputs,
    ContextPreview,
    LoreItem,
    RetrievedItem,
    build_context,
)
from app.engine.parsing import (
    Parsed,
    candidate_plans,
    copies_text,
    drop_repeated_sentences,
    merge_plans,
    parse_choice,
    parse_memory,
    parse_paragraph,
    parse_title_outline,
)
from app.engine.events import Event
from app.engine.prompts import PROMPTS_DIR, PromptLibrary
from app.engine.settings import MODES, NovelSettings, settings_notice
from app.engine.text import limit_words, sentences

VOICES = {
    "write": "Write in the third person, past tense, as a novel.",
    "interactive": "Write in the second person, present tense: the reader is the hero and is called 'you'.",
}
FALLBACK_PLANS = [
    "Continue the scene from where it stopped, with a new detail.",
    "Bring in a complication that makes the main character act.",
    "Reveal something unexpected about a character or the place.",
]
CHOICE_TOKENS = 6
# Retrieval's query vector is plan + LAST_PARAGRAPH_WEIGHT * last paragraph (each unit length), ranked by
# memory.retrieval.search: best sentence plus half the paragraph, fused with a lexical search for the plan's rare
# words. On bench/recall.py (facts inside paragraphs, paraphrased questions as the plan; bench/results/recall.json)
# every share of the last paragraph or the memory lowers recall@3 at 1,000 paragraphs: plan alone 0.80 (fused),
# plus 0.25 last 0.73 (fused) / 0.60 (vectors), plus 0.5 last 0.27, plus 0.25 last and 0.25 memory 0.47; the old
# score (paragraph vectors, plan + 0.5 last) 0.07. So the last paragraph, which is in the context already, no
# longer steers what is found.
LAST_PARAGRAPH_WEIGHT = 0.0


class EngineError(RuntimeError):
    """A step that could not be done; one line saying why and what to try. Nothing was saved."""


@dataclass
class StepOutcome:
    """What a committed step produced."""

    novel_id: int
    paragraph_id: int
    position: int
    paragraph: str
    memory: str
    plans: list[str]
    used_plan: str
    strategy: str
    notices: list[str] = field(default_factory=list)
    title: str | None = None
    outline: str | None = None


@dataclass
class _View:
    """A novel as one step needs it, read in one short transaction (plain values, no ORM objects)."""

    novel_id: int
    title: str
    premise: str
    style: str
    settings: dict  # config.to_dict(), plus the outline the start stage proposes
    config: NovelSettings
    paragraphs: list[tuple[int, str]]  # (position, text)
    memory: str
    memory_version: int
    plans: list[str]
    retry_revision_id: int | None = None
    retry_plan: str | None = None
    retry_plan_index: int | None = None
    # A notice when the stored settings held bad values (the defaults are used for those): every step shows it.
    notices: list[str] = field(default_factory=list)
    # (embedding id, paragraph text) of paragraphs saved before sentence vectors existed: the step fills them in.
    missing_sentences: list[tuple[int, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.paragraphs)

    def setting(self, key: str):
        return getattr(self.config, key)


@dataclass
class ReaderView:
    """Interactive fiction: the story so far as the reader sees it, and the choices for what they do next."""

    title: str
    paragraphs: list[str]
    choices: list[str]


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("stopped")


class Engine:
    """The writing engine over one store (session factory), one model (TextGenerator) and one embedder.

    With `models` (app.wiring.ModelService, or anything with `generator(model, device, dtype)`) the engine resolves
    each novel's model from the novel's own settings at every step, from what the step's one read transaction
    read; `generator` may then be None. Without it, `generator` writes every novel.
    """

    def __init__(self, session_factory, generator, embedder, snapshot_store=None,
                 prompts_dir: str | Path = PROMPTS_DIR, *, max_attempts: int | None = None, models=None):
        self.session_factory = session_factory
        self.generator = generator
        self.embedder = embedder
        self.snapshot_store = snapshot_store
        self.prompts = PromptLibrary(prompts_dir)
        self.max_attempts = max_attempts
        self.models = models

    def _for_novel(self, view: _View) -> Engine:
        """This engine over the novel's own model (its settings' model, device and dtype), when it resolves models
        itself; else itself. A copy, so a step already running keeps the model it started with; the model service
        refuses a server this launch does not allow (app.config.check_model_allowed) before anything is sent."""
        if self.models is None:
            return self
        bound = copy.copy(self)
        bound.models = None
        bound.generator = self.models.generator(view.config.model, view.config.device, view.config.dtype)
        return bound

    # ----------------------------------------------------------------------------------------------- reading

    @property
    def strategy(self) -> str:
        """`manuscript-state` when the model keeps a fixed-size state and snapshots can be stored, else
        `prompt-only`."""
        backend = getattr(self.generator, "backend", None)
        if (self.snapshot_store is not None and getattr(self.generator, "supports_state", False)
                and getattr(backend, "fixed_size_state", False)):
            return MANUSCRIPT_STATE
        return PROMPT_ONLY

    def _read(self, novel_id: int, *, for_retry: bool = False) -> _View:
        """Everything a step starts from, in one transaction: the novel and its settings (so its model), the
        manuscript, the memory, the pending plans and the paragraphs still missing sentence vectors."""
        with self.session_factory() as session, session.begin():
            novel = store.get_novel(session, novel_id)
            paragraphs = [(p.position, p.text) for p in store.paragraphs(session, novel_id)]
            memory = store.current_memory(session, novel_id)
            plan_set = store.current_plans(session, novel_id)
            config, problems = NovelSettings.repaired(novel.settings)
            view = _View(novel_id=novel_id, title=novel.title, premise=novel.premise or "",
                         style=novel.style_notes or "", settings=config.to_dict(), config=config,
                         notices=[settings_notice(problems)] if problems else [], paragraphs=paragraphs,
                         memory=memory.text if memory is not None else "",
                         memory_version=memory.version if memory is not None else 0,
                         plans=list(plan_set.plans) if plan_set is not None and plan_set.paragraph_id is None else [])
            if getattr(self.embedder, "passage", None) is not None:
                view.missing_sentences = [
                    (embedding.id, paragraph.text) for embedding, paragraph
                    in embeddings.embeddings_missing_sentences(session, novel_id, self.embedder.name)]
            if for_retry:
                self._read_retry(session, view)
            return view

    def _read_retry(self, session, view: _View) -> None:
        """Turn `view` into the inputs of the last step: the manuscript and memory before it, the plan it used."""
        done = [r for r in revisions.revisions(session, view.novel_id) if r.state == "done"]
        if not done or done[-1].kind != "step" or not view.paragraphs:
            raise EngineError("Retry rewrites the last written step, but the last change was not a step "
                              "(undo the later edits first, or write a new step).")
        last_position, _ = view.paragraphs[-1]
        last = store.paragraph_at(session, view.novel_id, last_position)
        history = store.memory_history(session, view.novel_id)
        previous = [m for m in history if m.version < view.memory_version]
        used = session.scalar(select(PlanSet).where(PlanSet.novel_id == view.novel_id,
                                                    PlanSet.paragraph_id == last.id))
        view.retry_revision_id = done[-1].id
        view.retry_plan = (used.used_text if used is not None and used.used_text else "")
        view.retry_plan_index = used.chosen_index if used is not None else None
        view.plans = list(used.plans) if used is not None else []
        view.paragraphs = view.paragraphs[:-1]
        view.memory = previous[-1].text if previous else ""
        view.memory_version = previous[-1].version if previous else 0

    def _query_vector(self, text: str):
        vector = getattr(self.embedder, "vector", None)
        if vector is not None:
            return vector(text)
        return Vector(self.embedder.name, self.embedder.embed([text])[0])

    def _passage_vector(self, text: str):
        """A paragraph's vector with its sentence vectors (one batch), when the embedder makes them."""
        passage = getattr(self.embedder, "passage", None)
        return passage(text) if passage is not None else self._query_vector(text)

    def _backfill_sentences(self, view: _View, batch: int = 64) -> Iterator[Event]:
        """Sentence vectors for paragraphs saved before they existed (the first step after the upgrade; the step's
        read found them): each batch embedded outside any transaction, then saved in a short one, with a progress
        event per batch."""
        missing = view.missing_sentences
        for start in range(0, len(missing), batch):
            chunk = missing[start:start + batch]
            yield Event("progress", f"Preparing retrieval: sentence vectors for {start + len(chunk)} of "
                                    f"{len(missing)} earlier paragraphs…")
            values = retrieval.sentence_vectors(self.embedder, [text for _, text in chunk])
            with self.session_factory() as session, session.begin():
                for (embedding_id, _), vectors in zip(chunk, values):
                    embeddings.set_sentence_vectors(session, embedding_id, vectors)

    def _retrieval_query(self, plan: str, last: str):
        """One vector whose cosine with a paragraph ranks it by cos(plan) + LAST_PARAGRAPH_WEIGHT * cos(last)."""
        parts = [(text, weight) for text, weight in ((plan, 1.0), (last, LAST_PARAGRAPH_WEIGHT))
                 if text.strip() and weight > 0]
        if not parts:
            return None
        vectors = [(self._query_vector(text.strip()), weight) for text, weight in parts]
        values = sum(weight * _unit(vector.values) for vector, weight in vectors)
        return Vector(vectors[0][0].embedder, np.asarray(values, dtype=np.float32))

    def _inputs(self, view: _View, plan: str, mode: str, strategy: str) -> ContextInputs:
        last = view.paragraphs[-1][1] if view.paragraphs else ""
        lore: list[LoreItem] = []
        retrieved: list[RetrievedItem] = []
        query = self._retrieval_query(plan, last)
        with self.session_factory() as session, session.begin():
            for entry in retrieval.triggered_lore(session, view.novel_id, f"{plan}\n{last}\n{view.memory}", query):
                lore.append(LoreItem(entry.name, entry.body, bool(entry.always_on)))
            k = int(view.setting("retrieval_top_k"))
            if strategy == PROMPT_ONLY and query is not None and k > 0 and view.count > 1:
                last_position = view.paragraphs[-1][0]
                # The last paragraph is in the context already; during a retry the store still holds the
                # paragraph being rewritten (last_position + 1), which this view does not contain.
                exclude = [last_position, last_position + 1]
                for hit in retrieval.search(session, view.novel_id, query, k, text=plan, exclude_positions=exclude):
                    retrieved.append(RetrievedItem(hit.paragraph.position, hit.paragraph.text, hit.score,
                                                   why=hit.why(), sentence=hit.sentence or ""))
        retrieved.sort(key=lambda item: -item.score)
        return ContextInputs(
            premise=view.premise, outline=str(view.settings.get("outline") or ""), style=view.style, lore=lore,
            memory=view.memory, retrieved=retrieved,
            last_paragraph=last if strategy == PROMPT_ONLY else "", plan=plan, voice=VOICES[mode],
            words=int(view.setting("paragraph_words")))

    def _budget(self, view: _View) -> int:
        window = int(getattr(self.generator, "context_window", 0) or 0)
        budget = int(view.setting("context_tokens"))
        if window > 0:
            budget = min(budget, window)
        return budget - int(view.setting("max_new_tokens"))

    def _mode(self, view: _View, mode: str | None) -> str:
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

    def _inspect(self, view: _View, plan: str | None, mode: str) -> ContextPreview:
        if not view.paragraphs:
            return self._opening_context(view, mode)
        plan = (plan or "").strip() or (view.plans[0] if view.plans else "")
        if not plan:
            raise EngineError("There is no plan to inspect: write an instruction for the next paragraph.")
        strategy = self.strategy
        preview = build_context(self.prompts, self.generator, self._inputs(view, plan, mode, strategy),
                                self._budget(view), strategy=strategy)
        if strategy == MANUSCRIPT_STATE:
            preview.manuscript_tokens = sum(self.generator.count_tokens(text + "\n\n") for _, text in view.paragraphs)
        return preview

    def _opening_context(self, view: _View, mode: str) -> ContextPreview:
        inputs = ContextInputs(premise=view.premise, outline=str(view.settings.get("outline") or ""),
                               style=view.style, voice=VOICES[mode], words=int(view.setting("paragraph_words")))
        with self.session_factory() as session, session.begin():
            inputs.lore = [LoreItem(e.name, e.body, bool(e.always_on))
                           for e in retrieval.triggered_lore(session, view.novel_id, view.premise)]
        return build_context(self.prompts, self.generator, inputs, self._budget(view), stage="opening",
                             strategy=PROMPT_ONLY)

    def reader_view(self, novel_id: int) -> ReaderView:
        """Interactive fiction: the paragraphs so far and the plans offered as the reader's choices."""
        view = self._read(novel_id)
        return ReaderView(view.title, [text for _, text in view.paragraphs], view.plans)

    # ----------------------------------------------------------------------------------------------- generation

    def _sampling(self, view: _View, attempt: int, *, temperature_cap: float | None = None):
        params = view.config.sampling_params()
        if params.seed is not None:
            params.seed = params.seed + attempt
        if temperature_cap is not None and params.temperature > temperature_cap:
            params.temperature = temperature_cap
        return params

    def _penalties(self, view: _View):
        return view.config.penalty_params()

    def _attempts(self, view: _View) -> int:
        return max(1, int(self.max_attempts or view.setting("max_attempts")))

    def _complete(self, preview_or_rendered, view: _View, attempt: int, max_new_tokens: int, cancel,
                  temperature_cap: float | None = 0.7) -> str:
        rendered = getattr(preview_or_rendered, "rendered", preview_or_rendered)
        prompt = self.generator.render_chat(rendered.messages) + rendered.answer_prefix
        pieces = self.generator.stream(prompt, sampling=self._sampling(view, attempt, temperature_cap=temperature_cap),
                                       max_new_tokens=max_new_tokens, cancel=cancel)
        return rendered.answer_prefix + "".join(pieces)

    def _paragraph(self, view: _View, preview: ContextPreview, cancel, notices: list[str],
                   state=None) -> Iterator[Event]:
        """Stream the paragraph (retrying a bounded number of times); the last event's text is the paragraph."""
        target = int(view.setting("paragraph_words"))
        penalties = self._penalties(view)
        history = "\n\n".join(text for _, text in view.paragraphs) if penalties.active else ""
        earlier = [text for _, text in view.paragraphs]
        problem = ""
        repeated = ""
        for attempt in range(self._attempts(view)):
            if attempt:
                yield Event("reset", f"Retrying the paragraph ({problem}).")
            raw = ""
            attempt_state = self.generator.backend.clone_state(state) if state is not None else None
            stream = self.generator.stream(
                preview.prompt_text, sampling=self._sampling(view, attempt), penalties=penalties,
                max_new_tokens=int(view.setting("max_new_tokens")), cancel=cancel, penalty_history=history,
                state=attempt_state)
            try:
                for piece in stream:
                    raw += piece
                    yield Event("token", piece)
                    # One paragraph is enough: stop at a blank line once a full-length paragraph is there.
                    if "\n\n" in raw.strip():
                        parsed = parse_paragraph(raw.strip().split("\n\n")[0])
                        if parsed.ok and len(parsed.value.split()) >= target * 0.6:
                            break
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
            parsed = parse_paragraph(raw)
            if parsed.ok:
                fresh = drop_repeated_sentences(parsed.value, earlier)
                if fresh.ok:
                    repairs = [r for r in (parsed.problem, fresh.problem) if r]
                    if repairs:
                        notices.append(f"Paragraph repaired: {'; '.join(repairs)}.")
                    yield Event("paragraph", fresh.value)
                    return
                # Mostly a copy of earlier paragraphs: worth another try; kept as the last resort.
                repeated = repeated or parsed.value
                problem = fresh.problem
            else:
                problem = parsed.problem
        if repeated:
            notices.append("Every try mostly repeated earlier paragraphs; the last one was kept as written: "
                           "rewrite it, retry, or raise the repetition penalties in Settings.")
            yield Event("paragraph", repeated)
            return
        raise EngineError(f"The model gave no usable paragraph in {self._attempts(view)} tries ({problem}); "
                          "nothing was saved. Try again, or change the plan or the sampling settings.")

    def _memory(self, view: _View, paragraph: str, cancel, notices: list[str]) -> str:
        max_words = int(view.setting("memory_words"))
        rendered = self.prompts.render("memory", memory=view.memory, paragraph=paragraph, max_words=max_words)
        problem = ""
        for attempt in range(self._attempts(view)):
            parsed = parse_memory(self._complete(rendered, view, attempt, int(max_words * 1.6) + 16, cancel),
                                  max_words)
            if parsed.ok:
                return parsed.value
            problem = parsed.problem
        if view.memory.strip():
            notices.append(f"The model gave no usable memory in {self._attempts(view)} tries ({problem}): "
                           "the previous memory was kept; edit it in the Memory tab if it needs the new events.")
            return view.memory
        fallback = limit_words(" ".join(sentences(paragraph)[:3]), max_words)
        notices.append(f"The model gave no usable memory in {self._attempts(view)} tries ({problem}): the memory "
                       "starts as the paragraph's first sentences; edit it in the Memory tab.")
        return fallback

    def _plans(self, view: _View, memory: str, paragraph: str, cancel, notices: list[str]) -> list[str]:
        rendered = self.prompts.render("plans", premise=view.premise, memory=memory, paragraph=paragraph)
        pooled: list[str] = []
        for attempt in range(self._attempts(view)):
            raw = self._complete(rendered, view, attempt, int(view.setting("plan_tokens")), cancel,
                                 temperature_cap=None)
            # A sentence copied from the paragraph is not a plan for the next one.
            pooled = merge_plans(pooled, [plan for plan in candidate_plans(raw) if not copies_text(plan, paragraph)])
            if len(pooled) == 3:
                return pooled
        missing = 3 - len(pooled)
        plans = merge_plans(pooled, FALLBACK_PLANS)
        notices.append(f"The model proposed only {3 - missing} usable plan(s) in {self._attempts(view)} tries: "
                       f"{missing} stock plan(s) were added; rewrite them as you like.")
        return plans

    def _choose(self, view: _View, cancel, notices: list[str]) -> int:
        """Auto mode: the model picks one of the pending plans (bounded retries, then the first plan)."""
        numbered = "\n".join(f"{i}. {plan}" for i, plan in enumerate(view.plans, 1))
        rendered = self.prompts.render("choose", memory=view.memory, plans=numbered)
        for attempt in range(self._attempts(view)):
            parsed: Parsed[int] = parse_choice(
                self._complete(rendered, view, attempt, CHOICE_TOKENS, cancel)[len(rendered.answer_prefix):],
                len(view.plans))
            if parsed.ok:
                return parsed.value
        notices.append("The model did not pick a plan: the first plan was used.")
        return 0

    # ----------------------------------------------------------------------------------------------- steps

    def start(self, novel_id: int, *, cancel: threading.Event | None = None, mode: str | None = None,
              propose_title: bool | None = None) -> Iterator[Event]:
        """Open a novel that has a premise and no paragraphs: propose a title and outline, write the first
        paragraph, the first memory and three plans, and commit them. The title replaces the novel's only when it
        was derived from the premise (or `propose_title=True`)."""
        view = self._read(novel_id)
        return (yield from self._for_novel(view)._start(view, cancel, mode, propose_title))

    def _start(self, view: _View, cancel, mode: str | None, propose_title: bool | None) -> Iterator[Event]:
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
            rendered = self.prompts.render("start", premise=view.premise, style=view.style)
            problem = ""
            for attempt in range(self._attempts(view)):
                title_parsed, outline_parsed = parse_title_outline(
                    self._complete(rendered, view, attempt, int(view.setting("title_tokens")), cancel))
                title = title or title_parsed.value
                if outline_parsed.ok:
                    outline = outline_parsed.value
                    break
                problem = outline_parsed.problem
            if not outline:
                notices.append(f"No usable outline in {self._attempts(view)} tries ({problem}): the opening is "
                               "written from the premise alone.")
            view.settings["outline"] = outline
        yield Event("progress", "Writing the opening…")
        return (yield from self._write_opening(view, mode, cancel, notices,
                                               title=title, outline=outline, propose_title=propose_title))

    def _write_opening(self, view: _View, mode: str, cancel, notices: list[str], **finish_args) -> Iterator[Event]:
        """Stream the opening paragraph from the premise, then finish the step (memory, plans, commit)."""
        preview = self._opening_context(view, mode)
        paragraph = ""
        for event in self._paragraph(view, preview, cancel, notices):
            if event.kind == "paragraph":
                paragraph = event.text
            yield event
        return (yield from self._finish(view, paragraph, plan_text="(the opening)", plan_index=None,
                                        strategy=PROMPT_ONLY, cancel=cancel, notices=notices, manuscript=None,
                                        **finish_args))

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

    def _resolve_plan(self, view: _View, plan: str | None, plan_index: int | None) -> tuple[str, int | None]:
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

    def _step(self, view: _View, plan_text: str, plan_index: int | None, cancel, mode: str,
              retry: bool = False) -> Iterator[Event]:
        strategy = self.strategy
        notices: list[str] = list(view.notices)
        yield from self._backfill_sentences(view)
        yield Event("progress", f"Building the context ({strategy})…")
        preview = build_context(self.prompts, self.generator, self._inputs(view, plan_text, mode, strategy),
                                self._budget(view), strategy=strategy)
        if preview.dropped:
            notices.append("To fit the context budget, left out: " + ", ".join(preview.dropped) + ".")
        manuscript = None
        if strategy == MANUSCRIPT_STATE:
            yield Event("progress", "Restoring the model's state after the manuscript…")
            manuscript = self._manuscript_state(view, cancel)
        yield Event("progress", "Writing the paragraph…")
        paragraph = ""
        for event in self._paragraph(view, preview, cancel, notices,
                                     state=manuscript.state if manuscript is not None else None):
            if event.kind == "paragraph":
                paragraph = event.text
            yield event
        return (yield from self._finish(view, paragraph, plan_text=plan_text, plan_index=plan_index,
                                        strategy=strategy, cancel=cancel, notices=notices, manuscript=manuscript,
                                        retry=retry))

    def _finish(self, view: _View, paragraph: str, *, plan_text: str, plan_index: int | None, strategy: str,
                cancel, notices: list[str], manuscript, retry: bool = False, title: str | None = None,
                outline: str | None = None, propose_title: bool | None = None) -> Iterator[Event]:
        yield Event("progress", "Updating the memory…")
        memory = self._memory(view, paragraph, cancel, notices)
        yield Event("memory", memory)
        yield Event("progress", "Proposing three plans…")
        plans = self._plans(view, memory, paragraph, cancel, notices)
        yield Event("plans", plans=plans)
        for notice in notices:
            yield Event("notice", notice)
        _check_cancel(cancel)
        embedding = self._passage_vector(paragraph)
        outcome = self._commit(view, paragraph, memory, plans, plan_text, plan_index, embedding, strategy, notices,
                               retry=retry, title=title, outline=outline, propose_title=propose_title)
        if manuscript is not None:
            self._save_snapshot(view, manuscript, paragraph, outcome.position)
        yield Event("done", f"Saved paragraph {outcome.position}.", outcome=outcome)
        return outcome

    def _commit(self, view: _View, paragraph: str, memory: str, plans: list[str], plan_text: str,
                plan_index: int | None, embedding, strategy: str, notices: list[str], *, retry: bool,
                title: str | None, outline: str | None, propose_title: bool | None) -> StepOutcome:
        with self.session_factory() as session, session.begin():
            if retry:
                done = [r for r in revisions.revisions(session, view.novel_id) if r.state == "done"]
                if not done or done[-1].id != view.retry_revision_id:
                    raise store.ConflictError("The novel changed while the step was rewritten; nothing was saved.")
                revisions.undo(session, view.novel_id)
            novel = store.get_novel(session, view.novel_id)
            if outline is not None and outline != (novel.settings or {}).get("outline"):
                store.update_novel_settings(session, view.novel_id, {"outline": outline})
            derived_title = novel.title.strip() == (view.premise.split("\n")[0][:60].strip() or "Untitled")
            new_title = None
            if title and (propose_title or (propose_title is None and derived_title)) and title != novel.title:
                store.rename_novel(session, view.novel_id, title)
                new_title = title
            elif title and title != novel.title:
                notices.append(f"Proposed title: {title!r} (rename the novel in the Library to use it).")
            result = store.commit_step(session, view.novel_id, paragraph, memory, plans, plan_index, plan_text,
                                       embedding, expected_memory_version=view.memory_version,
                                       expected_paragraph_count=view.count)
            return StepOutcome(novel_id=view.novel_id, paragraph_id=result.paragraph.id,
                               position=result.paragraph.position, paragraph=paragraph, memory=memory, plans=plans,
                               used_plan=plan_text, strategy=strategy, notices=list(notices), title=new_title,
                               outline=outline)

    def retry(self, novel_id: int, *, cancel: threading.Event | None = None,
              mode: str | None = None) -> Iterator[Event]:
        """Rewrite the last step from the same inputs (the manuscript, memory and plan it was written from). The
        new step replaces it in one transaction; Undo then returns to the state before that step."""
        view = self._read(novel_id, for_retry=True)
        mode = self._mode(view, mode)
        engine = self._for_novel(view)
        if not view.paragraphs:
            return (yield from engine._retry_opening(novel_id, view, cancel, mode))
        plan_text = view.retry_plan or (view.plans[view.retry_plan_index] if view.retry_plan_index is not None
                                        else "")
        if not plan_text:
            raise EngineError("The last step has no recorded plan to rewrite from: write a new step instead.")
        return (yield from engine._step(view, plan_text, view.retry_plan_index, cancel, mode, retry=True))

    def _retry_opening(self, novel_id: int, view: _View, cancel, mode: str) -> Iterator[Event]:
        return (yield from self._write_opening(view, mode, cancel, list(view.notices), retry=True))

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
                notices: list[str] = []
                if view.plans:
                    yield Event("progress", f"Step {done + 1} of {steps}: choosing a plan…", done=done, total=steps)
                    index = engine._choose(view, cancel, notices)
                    plan_text = view.plans[index]
                else:
                    index, plan_text = None, FALLBACK_PLANS[0]
                    notices.append("No plans were pending: the step continues the scene.")
                for notice in notices:
                    yield Event("notice", notice, done=done, total=steps)
                yield Event("progress", f"Step {done + 1} of {steps}: {plan_text}", done=done, total=steps)
                events = engine._step(view, plan_text, index, cancel, engine._mode(view, mode))
            for event in events:
                event.done, event.total = (done + 1 if event.kind == "done" else done), steps
                yield event

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

    def edit_paragraph(self, paragraph_id: int, text: str, expected_version: int):
        """Replace a paragraph's text (refused with ConflictError if it changed since `expected_version`): its
        embedding is refreshed in the same transaction and the model-state snapshots from it on are dropped."""
        embedding = self._passage_vector(text)
        with self.session_factory() as session, session.begin():
            paragraph = store.edit_paragraph(session, paragraph_id, text, expected_version, embedding=embedding)
            novel_id, position = paragraph.novel_id, paragraph.position
        self._invalidate_snapshots(novel_id, position)
        return paragraph

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

    def _snapshot_policy(self, view: _View):
        return strategies.policy(int(view.setting("snapshot_budget_mb")) * 1_000_000, str(view.setting("snapshot_dtype")))

    def _manuscript_state(self, view: _View, cancel):
        return strategies.restore_manuscript_state(self.generator, self.snapshot_store, view.novel_id, view.paragraphs,
                                        cancel=cancel, snapshot_policy=self._snapshot_policy(view))

    def _save_snapshot(self, view: _View, manuscript, paragraph: str, position: int) -> None:
        strategies.save_after_paragraph(self.generator, self.snapshot_store, view.novel_id, manuscript, paragraph, position,
                             snapshot_policy=self._snapshot_policy(view))


def _unit(values):
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(values))
    return values / norm if norm > 0 else values
