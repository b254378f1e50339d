"""Reading the store for a step: the novel as one step needs it (`NovelView`, one short transaction), the context's
inputs (lore, retrieved paragraphs) and the retrieval query, and the vectors a step embeds. Generates nothing and
writes only the sentence vectors of paragraphs saved before those existed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select

from memory import chapters, embeddings, rerank, retrieval, revisions, store
from memory.embeddings import Vector
from memory.schema import PlanSet

from app.engine.context import PROMPT_ONLY, ChapterSummaryItem, ContextInputs, LoreItem, RetrievedItem
from app.engine.errors import EngineError
from app.engine.events import Event
from app.engine.settings import NovelSettings, settings_notice

VOICES = {
    "write": "Write in the third person, past tense, as a novel.",
    "interactive": "Write in the second person, present tense: the reader is the hero and is called 'you'.",
}
# Retrieval's query vector is plan + LAST_PARAGRAPH_WEIGHT * last paragraph (each unit length), ranked by
# memory.retrieval.search: best sentence plus half the paragraph, fused with a lexical search for the plan's rare
# names. On bench/recall.py (facts inside paragraphs, paraphrased questions as the plan; bench/results/recall.json)
# every share of the last paragraph or the memory lowers recall@3 at 1,000 paragraphs: plan alone 0.80 (fused),
# plus 0.25 last 0.73 (fused) / 0.60 (vectors), plus 0.5 last 0.27, plus 0.25 last and 0.25 memory 0.47; the old
# score (paragraph vectors, plan + 0.5 last) 0.07. With centred cosines (memory.retrieval.CENTER_MIN_SENTENCES):
# plan alone 0.87, plus 0.25 last 0.73 (fused). With the hubness correction and names-only fusion (issue 19, 6
# held-out facts beside the 15): plan alone 0.87 at 300 / 1,000 / 3,000, plus 0.25 last 0.87 too (recall@1 0.67 /
# 0.73 / 0.80 against 0.73 each), plus 0.5 last (vectors) 0.87 / 0.80 / 0.80. So the last paragraph, which is in
# the context already, no longer steers what is found. The fused top 12 are then reranked by the LM (memory/rerank.py).
LAST_PARAGRAPH_WEIGHT = 0.0
# How many closed chapters' summaries a step's context holds at most: the ones most similar to the plan (cosine of
# MiniLM vectors), shown in book order. The truncation drops the least similar first.
CHAPTER_SUMMARIES_K = 4


@dataclass
class ChapterView:
    """A chapter as a step reads it: its summary (current version) and, for the open one, its paragraphs."""

    id: int
    position: int
    title: str
    closed: bool
    summary: str
    summary_version: int
    summary_stale: bool
    paragraph_positions: tuple[int, ...]


@dataclass
class NovelView:
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
    # Retry and "Another version": the paragraph they write another version of, and its version when read.
    retry_paragraph_id: int | None = None
    retry_paragraph_version: int | None = None
    retry_plan: str | None = None
    retry_plan_index: int | None = None
    # A notice when the stored settings held bad values (the defaults are used for those): every step shows it.
    notices: list[str] = field(default_factory=list)
    # (embedding id, paragraph text) of paragraphs saved before sentence vectors existed: the step fills them in.
    missing_sentences: list[tuple[int, str]] = field(default_factory=list)
    # (position, text) of the paragraphs written or edited since the memory was last updated (the writer's own,
    # an edit, an import): the memory stage folds them in before the new paragraph.
    pending: list[tuple[int, str]] = field(default_factory=list)
    # The paragraphs of `pending` as (id, version), so a commit can tell they are still what the memory read.
    pending_versions: list[tuple[int, int]] = field(default_factory=list)
    # The upper memory tiers: the chapters in book order (the last is the open one steps write into) and the synopsis.
    chapters: list[ChapterView] = field(default_factory=list)
    synopsis: str = ""
    synopsis_version: int = 0

    @property
    def open_chapter(self) -> ChapterView | None:
        return self.chapters[-1] if self.chapters else None

    @property
    def count(self) -> int:
        return len(self.paragraphs)

    def setting(self, key: str):
        return getattr(self.config, key)


@dataclass
class StoreReader:
    """What a step reads from one store (session factory), and the vectors it needs from one embedder."""

    session_factory: object
    embedder: object
    scorer: rerank.Scorer | None = None  # the LM rerank's (app/engine/rerank.py); None: skipped, for `skipped`
    skipped: str = ""

    def read(self, novel_id: int, *, for_retry: bool = False) -> NovelView:
        """Everything a step starts from, in one transaction: the novel and its settings (so its model), the
        manuscript, the memory, the pending plans and the paragraphs still missing sentence vectors."""
        with self.session_factory() as session, session.begin():
            novel = store.get_novel(session, novel_id)
            paragraphs = [(p.position, p.text) for p in store.paragraphs(session, novel_id)]
            memory = store.current_memory(session, novel_id)
            plan_set = store.current_plans(session, novel_id)
            config, problems = NovelSettings.repaired(novel.settings)
            view = NovelView(novel_id=novel_id, title=novel.title, premise=novel.premise or "",
                             style=novel.style_notes or "", settings=config.to_dict(), config=config,
                             notices=[settings_notice(problems)] if problems else [], paragraphs=paragraphs,
                             memory=memory.text if memory is not None else "",
                             memory_version=memory.version if memory is not None else 0,
                             plans=(list(plan_set.plans) if plan_set is not None and plan_set.paragraph_id is None
                                    else []))
            read_tiers(session, view)
            if getattr(self.embedder, "passage", None) is not None:
                view.missing_sentences = [
                    (embedding.id, paragraph.text) for embedding, paragraph
                    in embeddings.embeddings_missing_sentences(session, novel_id, self.embedder.name)]
            since = memory.created_at if memory is not None else None
            if for_retry:
                since = _read_retry(session, view)
            _read_pending(session, view, since)
            return view

    def query_vector(self, text: str):
        vector = getattr(self.embedder, "vector", None)
        if vector is not None:
            return vector(text)
        return Vector(self.embedder.name, self.embedder.embed([text])[0])

    def passage_vector(self, text: str):
        """A paragraph's vector with its sentence vectors (one batch), when the embedder makes them."""
        passage = getattr(self.embedder, "passage", None)
        return passage(text) if passage is not None else self.query_vector(text)

    def backfill_sentences(self, view: NovelView, batch: int = 64) -> Iterator[Event]:
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

    def retrieval_query(self, plan: str, last: str):
        """One vector whose cosine with a paragraph ranks it by cos(plan) + LAST_PARAGRAPH_WEIGHT * cos(last)."""
        parts = [(text, weight) for text, weight in ((plan, 1.0), (last, LAST_PARAGRAPH_WEIGHT))
                 if text.strip() and weight > 0]
        if not parts:
            return None
        vectors = [(self.query_vector(text.strip()), weight) for text, weight in parts]
        values = sum(weight * _unit(vector.values) for vector, weight in vectors)
        return Vector(vectors[0][0].embedder, np.asarray(values, dtype=np.float32))

    def step_inputs(self, view: NovelView, plan: str, mode: str, strategy: str) -> ContextInputs:
        """The context of the step written from `plan`: lore it triggers, the paragraphs retrieval finds (prompt-only
        strategy), the memory and the last paragraph."""
        last = view.paragraphs[-1][1] if view.paragraphs else ""
        lore: list[LoreItem] = []
        retrieved: list[RetrievedItem] = []
        notice = ""
        hits: list[retrieval.Hit] = []
        query = self.retrieval_query(plan, last)
        with self.session_factory() as session, session.begin():
            for entry in retrieval.triggered_lore(session, view.novel_id, f"{plan}\n{last}\n{view.memory}", query):
                lore.append(LoreItem(entry.name, entry.body, bool(entry.always_on)))
            k = int(view.setting("retrieval_top_k"))
            if strategy == PROMPT_ONLY and query is not None and k > 0 and view.count > 1:
                last_position = view.paragraphs[-1][0]
                # The last paragraph is in the context already; during a retry the store still holds the
                # paragraph being rewritten (last_position + 1), which this view does not contain.
                exclude = [last_position, last_position + 1]
                hits = retrieval.search(session, view.novel_id, query, rerank.search_depth(k, plan, self.scorer),
                                        text=plan, exclude_positions=exclude)
        if hits:
            # After the transaction: the LM rerank reads every candidate (seconds on a CPU).
            found = rerank.finish(hits, plan, self.scorer, k=k, skipped=self.skipped)
            notice = found.notice
            retrieved = [RetrievedItem(hit.paragraph.position, hit.paragraph.text, hit.score, why=hit.why(),
                                       sentence=hit.sentence or "") for hit in found.hits]
        retrieved.sort(key=lambda item: -item.score)
        chapter_so_far = view.open_chapter.summary if view.open_chapter is not None else ""
        return ContextInputs(
            premise=view.premise, outline=str(view.settings.get("outline") or ""), style=view.style, lore=lore,
            memory=view.memory, retrieved=retrieved, retrieval_notice=notice, synopsis=view.synopsis,
            chapters=self.relevant_chapters(view, plan), chapter_so_far=chapter_so_far,
            last_paragraph=last if strategy == PROMPT_ONLY else "", plan=plan, voice=VOICES[mode],
            words=int(view.setting("paragraph_words")))

    def relevant_chapters(self, view: NovelView, plan: str, k: int = CHAPTER_SUMMARIES_K) -> list[ChapterSummaryItem]:
        """The summaries of chapters before the open one, the `k` most similar to the plan (all of them when there
        are no more than k), scored by cosine with the plan."""
        earlier = [c for c in view.chapters[:-1] if c.summary.strip()]
        if not earlier:
            return []
        scores = [0.0] * len(earlier)
        if plan.strip() and getattr(self.embedder, "embed", None) is not None:
            plan_vector = _unit(self.query_vector(plan.strip()).values)
            summary_vectors = self.embedder.embed([c.summary for c in earlier])
            scores = [float(_unit(vector) @ plan_vector) for vector in summary_vectors]
        ranked = sorted(zip(earlier, scores), key=lambda pair: -pair[1])[:k]
        return sorted((ChapterSummaryItem(position=c.position, title=c.title, text=c.summary, score=score,
                                          stale=c.summary_stale) for c, score in ranked),
                      key=lambda item: item.position)

    def opening_inputs(self, view: NovelView, mode: str) -> ContextInputs:
        """The context of the opening paragraph: the premise, outline, style and the lore the premise triggers."""
        inputs = ContextInputs(premise=view.premise, outline=str(view.settings.get("outline") or ""),
                               style=view.style, voice=VOICES[mode], words=int(view.setting("paragraph_words")))
        with self.session_factory() as session, session.begin():
            inputs.lore = [LoreItem(e.name, e.body, bool(e.always_on))
                           for e in retrieval.triggered_lore(session, view.novel_id, view.premise)]
        return inputs


def _read_pending(session, view: NovelView, since) -> None:
    """The paragraphs of `view` written or edited after `since` (when the memory it holds was made)."""
    positions = {position for position, _ in view.paragraphs}
    changed = [p for p in store.paragraphs_changed_since(session, view.novel_id, since) if p.position in positions]
    view.pending = [(p.position, p.text) for p in changed]
    view.pending_versions = [(p.id, p.version) for p in changed]


def read_tiers(session, view: NovelView) -> None:
    """Fill in the chapters (with their current summaries) and the synopsis of `view`."""
    positions: dict[int, list[int]] = {}
    for paragraph in store.paragraphs(session, view.novel_id):
        positions.setdefault(paragraph.chapter_id, []).append(paragraph.position)
    view.chapters = []
    for chapter in store.chapters(session, view.novel_id):
        summary = chapters.current_summary(session, chapter.id)
        view.chapters.append(ChapterView(
            id=chapter.id, position=chapter.position, title=chapter.title, closed=bool(chapter.closed),
            summary=summary.text if summary is not None else "",
            summary_version=summary.version if summary is not None else 0,
            summary_stale=bool(chapter.summary_stale), paragraph_positions=tuple(positions.get(chapter.id, ()))))
    synopsis = chapters.current_synopsis(session, view.novel_id)
    view.synopsis = synopsis.text if synopsis is not None else ""
    view.synopsis_version = synopsis.version if synopsis is not None else 0


def _read_retry(session, view: NovelView):
    """Turn `view` into the inputs of the step that wrote the last paragraph: the manuscript and memory before it,
    the plan it used. Later picks, rewrites and edits of that paragraph do not matter: the new version is kept
    beside it (memory/alternatives.py). Returns when that memory was made."""
    if not view.paragraphs:
        raise EngineError("There is no paragraph to write another version of: write a step first.")
    last_position, _ = view.paragraphs[-1]
    last = store.paragraph_at(session, view.novel_id, last_position)
    step = _step_that_wrote(session, view.novel_id, last.id)
    if step is None:
        raise EngineError("Retry writes another version of the last paragraph the model wrote as a step, but the "
                          "last paragraph was not written by a step (write a new step instead).")
    written = [change["after"]["version"] for change in step.changes
               if change["entity"] == "short_term_memories" and change["before"] is None]
    before = [m for m in store.memory_history(session, view.novel_id) if written and m.version < written[0]]
    used = session.scalar(select(PlanSet).where(PlanSet.novel_id == view.novel_id,
                                                PlanSet.paragraph_id == last.id))
    view.retry_paragraph_id, view.retry_paragraph_version = last.id, last.version
    view.retry_plan = (used.used_text if used is not None and used.used_text else "")
    view.retry_plan_index = used.chosen_index if used is not None else None
    view.plans = list(used.plans) if used is not None else []
    view.paragraphs = view.paragraphs[:-1]
    view.memory = before[-1].text if before else ""
    view.memory_version = before[-1].version if before else 0
    return before[-1].created_at if before else None


def _step_that_wrote(session, novel_id: int, paragraph_id: int):
    """The revision still in effect (a step) that inserted paragraph `paragraph_id`, or None."""
    for revision in reversed(revisions.revisions(session, novel_id)):
        if revision.state != "done" or revision.kind != "step":
            continue
        if any(change["entity"] == "paragraphs" and change["before"] is None and change["id"] == paragraph_id
               for change in revision.changes):
            return revision
    return None


def _unit(values):
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(values))
    return values / norm if norm > 0 else values
