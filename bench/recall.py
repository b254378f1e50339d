"""Hard retrieval recall: a fact is one sentence inside an on-topic paragraph, and the question paraphrases it.

Each fact of bench/recall_facts.py is the 3rd sentence of a 5-sentence paragraph about the same scene, planted
early (positions 3, 5, 7, ...) in a manuscript of 300, 1,000 and 3,000 paragraphs whose other paragraphs are 5 story
sentences recombined (seeded) from the demo worlds' sentence pool below: the same characters, places and topics.
Each question avoids the fact's rare words. Every method ranks the novel's paragraphs through
`memory.retrieval.search` on a real SQLite file built by the migrations (FTS5 index and all), with the app's real
all-MiniLM-L6-v2; recall@1/3/5 counts questions whose fact paragraph ranks that high; latency is the median of
one warm top-5 query (the novel's matrices cached) per question, the query vector already made.

Each method reports FACTS (the 15 first tuned on; top level), HELD_OUT_FACTS ("held_out", 6), FRESH_FACTS ("fresh",
30 written blind by a writer who saw no result of any method), "development" (those 51, on which the weights of
memory/retrieval.py were then chosen), "test" (TEST_FACTS: 30 more written blind after that choice, measured once
with it) and "all" (the 81), every fact planted in every manuscript.
Methods: paragraph vectors with the question alone; the engine's old score cos(plan) + 0.5 cos(last paragraph)
(the question as the plan, the manuscript's last paragraph as the last); best sentence; best sentence plus w x
the paragraph; lexical (FTS5 bm25 over the question's words); fused (RRF of best sentence + w x paragraph with
lexical over the question's rare names, memory.retrieval.FUSION_NAMES_ONLY; or over every rare word); the same
without the hubness correction; the two-stage search forced, its first stage through the projection or exact.
Step-query variants weigh in the last paragraph and the short-term memory the way the engine would.
"fused + LM rerank" (hard variant only; --lm-rerank 0 skips it): the fused top memory.rerank.RERANK_DEPTH reranked by
RRF of their fused rank and log P(question | paragraph) under the default LM loaded as the app loads it
(SmolLM2-135M-Instruct through llama.cpp and its Q8_0 copy, --lm-threads threads; app/engine/rerank.py's prompt),
as the step and the Memory tab do with --lm-rerank 1; ranks below
the reranked ones are the fused ranking's; its latency is the whole reranked query (the LM reads every candidate).
The easy needle (the fact as a paragraph of its own, as bench/quality.py plants it) is measured beside them, and
"hard_dialogue": the hard manuscripts with two filler paragraphs in five cut to one sentence and one to two.
At 1,000, 10,000 and 100,000 paragraphs (random unit vectors, 5 sentences each; filler text for FTS) the warm
query latency of each method is measured too, two-stage as the app runs it and exact (every paragraph scored by
sentence), and two-stage with an exact first stage instead of the projection; with the bytes per
paragraph the cached matrix holds, and the seconds the cached matrix takes to follow an edit, its undo and redo
(memory.retrieval._matrix_from) with the first query after each. Embeddings are cached per text within the run
(--embedding-cache: across runs, per embedder).

    python -m bench.recall --out bench/results/recall.json --large 0
    python -m bench.recall --sizes 300 --large 1000,10000,100000 --out bench/results/recall_latency.json
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.recall_facts import FACTS, FRESH_FACTS, HELD_OUT_FACTS, TEST_FACTS  # noqa: E402
from bench.report import commit, machine, write_result  # noqa: E402
from memory import embeddings, rerank, retrieval, revisions, store  # noqa: E402
from memory.embeddings import Vector  # noqa: E402
from memory.db import open_database  # noqa: E402
from memory.schema import Embedding, Novel, Paragraph, utcnow  # noqa: E402
from sqlalchemy import func, select, update  # noqa: E402

SIZES = (300, 1_000, 3_000)
LARGE_DEFAULT = "1000,10000,100000"
KS = (1, 3, 5)
DEPTH = 50  # ranks beyond this are reported as null
SEED = 19
NEVER_CENTER = 10 ** 12  # center_from for the raw-cosine rows

ALL_FACTS = FACTS + HELD_OUT_FACTS + FRESH_FACTS + TEST_FACTS
DEVELOPMENT = len(FACTS) + len(HELD_OUT_FACTS) + len(FRESH_FACTS)  # the facts the weights were chosen on

# The demo worlds (data/premises): people, places and sentence templates that filler paragraphs are built from.
WORLDS = {
    "lighthouse": {
        "names": ["Mara", "Tomas", "the ferryman", "old Brannock"],
        "places": ["the gallery", "the boathouse", "the cottage", "the lamp stairs", "the landing stage"],
        "sentences": [
            "{a} scraped salt from the windows of {p} while the gulls wheeled overhead.",
            "At {t}, {a} logged the weather in the ledger kept at {p}.",
            "{a} and {b} hauled the supply crates up from {p}, resting at every turn.",
            "The lens turned above {p} and threw its slow white arm across the water.",
            "{a} mended a net at {p}, humming a tune {b} used to whistle.",
            "Rain drummed on the roof of {p} and {a} counted the seconds between the flashes.",
            "{a} oiled the clockwork in {p} and wound it until the weights hung high.",
            "The tide came in fast that {t}, and {a} watched it cover the path below {p}.",
        ]},
    "baker": {
        "names": ["Ottilie", "the apprentice", "the miller's son", "Widow Haske"],
        "places": ["the bakery", "Mill Lane", "the market square", "the flour loft", "the church steps"],
        "sentences": [
            "{a} kneaded dough at {p} until the sun came up over the roofs.",
            "At {t}, {a} carried trays of rolls across {p} to the waiting carts.",
            "{a} argued with {b} at {p} about the price of rye that season.",
            "The smell of cinnamon drifted over {p} and drew the children in.",
            "{a} swept the flour from the floor of {p} and sang to the cat.",
            "{b} brought news to {p} that the river had frozen upstream.",
            "{a} counted the coins at {p} twice and frowned at the total.",
            "Smoke from the ovens hung over {p} all through the {t}.",
        ]},
    "detective": {
        "names": ["Inspector Vane", "the widow", "the gardener", "Constable Pike"],
        "places": ["the station house", "the manor library", "the churchyard", "the coroner's office",
                   "the railway inn"],
        "sentences": [
            "{a} questioned {b} at {p} for an hour and learned nothing new.",
            "At {t}, {a} walked from {p} to the river, thinking it through.",
            "{a} found a muddy bootprint near {p} and sketched it in a notebook.",
            "The fog pressed against the windows of {p} as {a} read the file again.",
            "{b} swore at {p} that the doors had been locked all evening.",
            "{a} laid the photographs out on the table at {p} in a careful row.",
            "A telegram from the city reached {a} at {p} in the {t}.",
            "{a} lit a pipe at {p} and let {b} talk until the story changed.",
        ]},
    "ship": {
        "names": ["Captain Ilse", "Wen", "the chief engineer", "the quartermaster"],
        "places": ["the commons", "the hydroponics deck", "the bridge", "the cargo spine", "the school ring"],
        "sentences": [
            "{a} checked the air gauges on {p} and initialled the log.",
            "At {t}, {a} and {b} ran the drill on {p} until the children were bored.",
            "The lights on {p} dimmed to amber for the ship's night.",
            "{a} repaired a leaking valve behind {p} with borrowed tools.",
            "{b} told {a} on {p} that the seed stocks were holding steady.",
            "Music drifted along {p} from someone's old recordings.",
            "{a} stared at the dark beyond the window of {p} for a long time.",
            "A vote was held on {p} about the rations, and {a} lost it.",
        ]},
    "caravan": {
        "names": ["Old Yusuf", "the merchant", "the drivers", "Leila"],
        "places": ["the oasis", "the salt road", "the red dunes", "the well of stones", "the market at Zerqa"],
        "sentences": [
            "{a} led the camels past {p} as the heat rose off the sand.",
            "At {t}, {a} and {b} shared dates and bitter coffee near {p}.",
            "{a} traded salt for copper pots at {p} and grumbled about the rate.",
            "The wind lifted the sand over {p} in long pale ribbons.",
            "{b} sang an old song at {p} while {a} mended a saddle.",
            "{a} counted the water skins at {p} and ordered them rationed.",
            "A hawk circled above {p} for an hour and then was gone.",
            "{a} slept badly near {p}, dreaming of green rivers.",
        ]},
}
TIMES = ["dawn", "noon", "dusk", "midnight", "morning", "evening"]


def filler(count: int, seed: int = SEED) -> list[str]:
    """`count` paragraphs of 5 story sentences from one world each, recombined with a seeded generator."""
    rng = random.Random(seed)
    worlds = list(WORLDS.values())
    out = []
    for _ in range(count):
        world = rng.choice(worlds)
        sentences = []
        for template in rng.sample(world["sentences"], 5):
            a, b = rng.sample(world["names"], 2)
            sentence = template.format(a=a, b=b, p=rng.choice(world["places"]), t=rng.choice(TIMES))
            sentences.append(sentence[0].upper() + sentence[1:])
        out.append(" ".join(sentences))
    return out


def dialogue_filler(fillers: list[str], seed: int = SEED) -> list[str]:
    """The same filler with two paragraphs in five cut to their first sentence and one in five to two (seeded), as
    a novel's dialogue lines are: a one-sentence paragraph's one match counts in both its sentence and paragraph
    terms, which the five-sentence filler never tests."""
    rng = random.Random(seed)
    return [" ".join(retrieval.sentence_texts(text)[:rng.choice((1, 1, 2, 5, 5))]) for text in fillers]


def fact_paragraph(fact: dict) -> str:
    context = fact["context"]
    return " ".join([context[0], context[1], fact["fact"], context[2], context[3]])


def manuscript(size: int, fillers: list[str], easy: bool) -> tuple[list[str], list[int]]:
    """The paragraphs of one novel and the positions (1-based) of the fact paragraphs in it."""
    texts = list(fillers[:size - len(ALL_FACTS)])
    positions = []
    for i, fact in enumerate(ALL_FACTS):
        position = 3 + 2 * i
        texts.insert(position - 1, fact["fact"] if easy else fact_paragraph(fact))
        positions.append(position)
    return texts, positions


class EmbeddingCache:
    """The real embedder with a per-text cache, embedding only texts not seen yet, in batches."""

    def __init__(self, embedder: retrieval.Embedder):
        self.embedder = embedder
        self.vectors: dict[str, np.ndarray] = {}
        self.seconds = 0.0

    def get(self, texts: list[str]) -> np.ndarray:
        new = list(dict.fromkeys(t for t in texts if t not in self.vectors))
        if new:
            start = time.perf_counter()
            for offset in range(0, len(new), 256):
                chunk = new[offset:offset + 256]
                for text, vector in zip(chunk, self.embedder.embed(chunk)):
                    self.vectors[text] = vector
            self.seconds += time.perf_counter() - start
        return np.stack([self.vectors[t] for t in texts]) if texts else np.zeros((0, self.embedder.dim))

    def load(self, path: Path) -> None:
        """The texts and vectors `save` wrote (no pickle); refused when another embedder made them."""
        with np.load(path, allow_pickle=False) as saved:
            made_by = str(saved["embedder"])
            if made_by != self.embedder.name:
                raise SystemExit(f"{path} holds vectors from {made_by}, not {self.embedder.name}: "
                                 "pass another --embedding-cache.")
            self.vectors.update(zip(saved["texts"].tolist(), saved["vectors"]))

    def save(self, path: Path) -> None:
        texts = list(self.vectors)
        vectors = self.get(texts)  # every one cached: nothing is embedded
        with open(path, "wb") as handle:  # a handle, so numpy keeps the name as given (no ".npz" added)
            np.savez(handle, embedder=np.array(self.embedder.name), texts=np.array(texts, dtype=str),
                     vectors=vectors.astype(np.float32))


def build_novel(Session, cache: EmbeddingCache, title: str, texts: list[str]) -> int:
    """A novel with these paragraphs, each with its paragraph and sentence vectors (bulk inserts, no history)."""
    name = cache.embedder.name
    paragraph_vectors = cache.get(texts)
    sentence_lists = [retrieval.sentence_texts(t) or [t] for t in texts]
    sentence_vectors = cache.get([s for sentences in sentence_lists for s in sentences])
    now = utcnow()
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, title).id
        s.execute(Paragraph.__table__.insert(), [
            {"novel_id": novel_id, "position": i + 1, "text": text, "words": len(text.split()),
             "origin": "written", "version": 1, "created_at": now, "updated_at": now} for i, text in enumerate(texts)])
        ids = [p.id for p in store.paragraphs(s, novel_id)]
        rows, offset = [], 0
        for i, (pid, sentences) in enumerate(zip(ids, sentence_lists)):
            block = sentence_vectors[offset:offset + len(sentences)]
            offset += len(sentences)
            data, dim = embeddings.vector_bytes(Vector(name, paragraph_vectors[i]))
            rows.append({"novel_id": novel_id, "paragraph_id": pid, "embedder": name, "dim": dim, "vector": data,
                         "sentence_vectors": embeddings.sentence_bytes(block, dim), "created_at": now})
        s.execute(Embedding.__table__.insert(), rows)
        s.execute(update(Novel).where(Novel.id == novel_id).values(embedding_epoch=Novel.embedding_epoch + 1))
    return novel_id


def _unit(values: np.ndarray) -> np.ndarray:
    return values / np.linalg.norm(values)


def methods(cache: EmbeddingCache, question: str, last: str, memory: str) -> dict[str, dict]:
    """Each method's arguments to memory.retrieval.search for one question."""
    name = cache.embedder.name
    q, l, m = (cache.get([t])[0] for t in (question, last, memory))

    def vec(values):
        return Vector(name, _unit(values).astype(np.float32))

    return {
        "paragraph": {"query_vector": vec(q), "method": "paragraph"},
        "engine_old: paragraph, plan + 0.5 last": {"query_vector": vec(q + 0.5 * l), "method": "paragraph"},
        "best sentence": {"query_vector": vec(q), "method": "sentence", "paragraph_weight": 0.0, "window_weight": 0.0},
        **{f"best sentence + {weight} paragraph": {"query_vector": vec(q), "method": "sentence",
                                                   "paragraph_weight": weight, "window_weight": 0.0}
           for weight in (0.25, 0.5, 1.0)},
        **{f"best sentence + {window} best window + 0.5 paragraph": {
            "query_vector": vec(q), "method": "sentence", "window_weight": window} for window in (0.5, 1.0)},
        # Without the hubness correction (memory.retrieval.HUB_WEIGHT), as before it.
        "no hubness: best sentence + 1.0 window + 0.5 paragraph": {"query_vector": vec(q), "method": "sentence",
                                                                   "hub_weight": 0.0},
        "no hubness: fused RRF": {"query_vector": vec(q), "text": question, "method": "fused", "hub_weight": 0.0},
        # Lexical over every rare word of the question, not only its names (memory.retrieval.FUSION_NAMES_ONLY).
        "fused RRF, every rare word": {"query_vector": vec(q), "text": question, "method": "fused",
                                       "names_only": False},
        "fused RRF, no window": {"query_vector": vec(q), "text": question, "method": "fused", "window_weight": 0.0},
        # The fused default before the weights were chosen again on the 51 development facts (memory.retrieval).
        "fused RRF, old default (window 1.0, paragraph 0.5, hubness 0.5)": {
            "query_vector": vec(q), "text": question, "method": "fused", "window_weight": 1.0, "paragraph_weight": 0.5,
            "hub_weight": 0.5},
        # Forced two-stage: only the 100 paragraphs closest by paragraph vector are scored by sentence.
        "fused RRF, two-stage (100 candidates)": {"query_vector": vec(q), "text": question, "method": "fused",
                                                  "exact_up_to": 0, "candidates": 100},
        # The same with an exact first stage instead of the 128-dim projection (memory.retrieval.PROJECTION_DIM).
        "fused RRF, two-stage (100 candidates), exact first stage": {
            "query_vector": vec(q), "text": question, "method": "fused", "exact_up_to": 0, "candidates": 100,
            "shortlist": 0},
        # Raw cosines, as before the centring (memory.retrieval.CENTER_MIN_SENTENCES): the same scores otherwise.
        "raw cosines: best sentence + 1.0 window + 0.5 paragraph": {
            "query_vector": vec(q), "method": "sentence", "center_from": NEVER_CENTER},
        "raw cosines: fused RRF": {"query_vector": vec(q), "text": question, "method": "fused",
                                   "center_from": NEVER_CENTER},
        "raw cosines: paragraph": {"query_vector": vec(q), "method": "paragraph", "center_from": NEVER_CENTER},
        "lexical (FTS5 bm25)": {"query_vector": None, "text": question, "method": "lexical"},
        **{f"fused RRF (rare words), lexical weight {weight}": {
            "query_vector": vec(q), "text": question, "method": "fused", "lexical_weight": weight}
           for weight in (0.5, 1.0)},
        # The step's query: the plan (here the question), the last paragraph, the short-term memory.
        "step: sentence, plan + 0.5 last": {"query_vector": vec(q + 0.5 * l), "method": "sentence"},
        "step: sentence, plan + 0.25 last": {"query_vector": vec(q + 0.25 * l), "method": "sentence"},
        "step: sentence, plan + 0.25 last + 0.25 memory": {"query_vector": vec(q + 0.25 * l + 0.25 * m),
                                                           "method": "sentence"},
        "step: fused, plan + 0.25 last, lexical plan": {"query_vector": vec(q + 0.25 * l), "text": question,
                                                        "method": "fused"},
        "step: fused, plan only, lexical plan": {"query_vector": vec(q), "text": question, "method": "fused"},
    }


LM_RERANK = "fused + LM rerank"


def reranked_ranks(Session, cache: EmbeddingCache, novel_id: int, positions: list[int], scorer) -> dict:
    """Each question's rank of its fact paragraph by the fused search reranked by the LM, and the query's ms."""
    row: dict[str, list] = {"ranks": [], "ms": []}
    with Session() as s:
        for fact, position in zip(ALL_FACTS, positions):
            question = fact["question"]
            vector = Vector(cache.embedder.name, cache.get([question])[0])
            start = time.perf_counter()
            found = rerank.search_reranked(s, novel_id, vector, rerank.RERANK_DEPTH, text=question, scorer=scorer)
            elapsed = time.perf_counter() - start
            if found.notice:
                raise RuntimeError(found.notice)
            rest = retrieval.search(s, novel_id, vector, DEPTH, text=question)[len(found.hits):]
            ranks = [i for i, hit in enumerate(found.hits + rest, 1) if hit.paragraph.position == position]
            row["ranks"].append(ranks[0] if ranks else None)
            row["ms"].append(1000 * elapsed)
    return row


def measure(Session, cache: EmbeddingCache, novel_id: int, texts: list[str], positions: list[int],
            scorer=None) -> dict:
    last = texts[-1]
    memory = " ".join(retrieval.sentence_texts(texts[-2])[:2] + retrieval.sentence_texts(texts[-3])[:2])
    per_method: dict[str, dict] = {}
    with Session() as s:
        retrieval.search(s, novel_id, methods(cache, FACTS[0]["question"], last, memory)["paragraph"]["query_vector"],
                         1)  # load the matrices into the cache
        for fact, position in zip(ALL_FACTS, positions):
            for label, kwargs in methods(cache, fact["question"], last, memory).items():
                start = time.perf_counter()
                retrieval.search(s, novel_id, k=5, **kwargs)
                elapsed = time.perf_counter() - start
                hits = retrieval.search(s, novel_id, k=DEPTH, **kwargs)
                ranks = [i for i, hit in enumerate(hits, 1) if hit.paragraph.position == position]
                row = per_method.setdefault(label, {"ranks": [], "ms": []})
                row["ranks"].append(ranks[0] if ranks else None)
                row["ms"].append(1000 * elapsed)
    if scorer is not None:
        per_method[LM_RERANK] = reranked_ranks(Session, cache, novel_id, positions, scorer)
    out = {}
    for label, row in per_method.items():
        ranks, held_out, fresh, test = split_groups(row["ranks"])
        out[label] = {**recall_at(ranks), "ranks": ranks, "held_out": {**recall_at(held_out), "ranks": held_out},
                      "fresh": {**recall_at(fresh), "ranks": fresh}, "test": {**recall_at(test), "ranks": test},
                      "development": recall_at(row["ranks"][:DEVELOPMENT]), "all": recall_at(row["ranks"]),
                      "query_ms_median": round(statistics.median(row["ms"]), 2)}
    return out


def split_groups(ranks: list) -> tuple[list, list, list, list]:
    """Per-question values in ALL_FACTS order, split into FACTS, HELD_OUT_FACTS, FRESH_FACTS and TEST_FACTS."""
    tuned, held = len(FACTS), len(FACTS) + len(HELD_OUT_FACTS)
    return ranks[:tuned], ranks[tuned:held], ranks[held:DEVELOPMENT], ranks[DEVELOPMENT:]


def recall_at(ranks: list[int | None]) -> dict:
    return {f"recall@{k}": round(sum(r is not None and r <= k for r in ranks) / len(ranks), 3) for k in KS}


def float16_check(cache: EmbeddingCache, texts: list[str], positions: list[int]) -> dict:
    """Best-sentence ranking of every question with float32 vs float16 sentence vectors (numpy, same texts)."""
    sentence_lists = [retrieval.sentence_texts(t) or [t] for t in texts]
    flat = cache.get([s for sentences in sentence_lists for s in sentences])
    starts = np.cumsum([0] + [len(x) for x in sentence_lists[:-1]])
    half = flat.astype(np.float16).astype(np.float32)
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    same_top5, ranks32, ranks16 = 0, [], []
    for fact, position in zip(FACTS, positions):
        q = cache.get([fact["question"]])[0]
        orders = []
        for matrix in (flat, half):
            best = np.maximum.reduceat(matrix @ q, starts)
            orders.append(list(np.argsort(-best, kind="stable")[:DEPTH] + 1))
        same_top5 += orders[0][:5] == orders[1][:5]
        ranks32.append(orders[0].index(position) + 1 if position in orders[0] else None)
        ranks16.append(orders[1].index(position) + 1 if position in orders[1] else None)
    return {"questions_with_identical_top5": same_top5, "questions": len(FACTS), "ranks_float32": ranks32,
            "ranks_float16": ranks16}


def storage(Session, novel_id: int) -> dict:
    with Session() as s:
        count, vector, sentences = s.execute(select(
            func.count(Embedding.id), func.sum(func.length(Embedding.vector)),
            func.sum(func.length(Embedding.sentence_vectors))).where(Embedding.novel_id == novel_id)).one()
    return {"paragraph_vector_bytes": round(vector / count, 1), "sentence_vector_bytes": round(sentences / count, 1),
            "sentence_vectors_float32_would_be": round(2 * sentences / count, 1)}


def large_latency(workdir: Path, dim: int, fillers: list[str], size: int) -> dict:
    """Warm query latency at `size` paragraphs: random unit vectors (5 sentences each), filler text for FTS5."""
    rng = np.random.default_rng(SEED)
    _, Session = open_database(f"sqlite:///{workdir / f'large{size}.db'}")
    now = utcnow()
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, f"{size} paragraphs").id
    for offset in range(0, size, 10_000):
        count = min(10_000, size - offset)
        vectors = rng.normal(size=(count, dim)).astype(np.float32)
        sentences = rng.normal(size=(count, 5, dim)).astype(np.float32)
        with Session() as s, s.begin():
            s.execute(Paragraph.__table__.insert(), [
                {"novel_id": novel_id, "position": offset + i + 1, "text": fillers[(offset + i) % len(fillers)],
                 "words": 0, "origin": "written", "version": 1, "created_at": now, "updated_at": now}
                for i in range(count)])
            ids = s.scalars(select(Paragraph.id).where(Paragraph.novel_id == novel_id,
                                                       Paragraph.position > offset).order_by(Paragraph.position)).all()
            s.execute(Embedding.__table__.insert(), [
                {"novel_id": novel_id, "paragraph_id": pid, "embedder": "bench", "dim": dim,
                 "vector": embeddings.vector_bytes(Vector("bench", vectors[i]))[0],
                 "sentence_vectors": embeddings.sentence_bytes(sentences[i], dim), "created_at": now}
                for i, pid in enumerate(ids)])
    with Session() as s, s.begin():
        s.execute(update(Novel).where(Novel.id == novel_id).values(embedding_epoch=Novel.embedding_epoch + 1))
    out = {"paragraphs": size, "sentences_per_paragraph": 5, "dim": dim}
    questions = [f["question"] for f in FACTS]
    with Session() as s:
        start = time.perf_counter()
        retrieval.search(s, novel_id, Vector("bench", rng.normal(size=dim)), 5, method="sentence")
        out["cold_load_s"] = round(time.perf_counter() - start, 2)
        # "_exact": every paragraph scored by sentence, whatever the size (the search before the two-stage one).
        # "_exact_first_stage": two-stage, candidates picked by exact paragraph cosines, not the projection.
        variants = {**{method: {"method": method} for method in retrieval.METHODS},
                    **{f"{method}_exact": {"method": method, "exact_up_to": 10 ** 12}
                       for method in ("sentence", "fused")},
                    **{f"{method}_exact_first_stage": {"method": method, "shortlist": 0}
                       for method in ("sentence", "fused")}}
        for label, kwargs in variants.items():
            times = []
            for question in questions:
                query = Vector("bench", rng.normal(size=dim).astype(np.float32))
                start = time.perf_counter()
                retrieval.search(s, novel_id, query, 5, text=question, **kwargs)
                times.append(1000 * (time.perf_counter() - start))
            out[f"{label}_ms_median"] = round(statistics.median(times), 2)
        out["memory_bytes_per_paragraph"] = matrix_bytes(s, novel_id, dim)
    out.update(edit_update(Session, rng, novel_id, dim, questions[0]))
    out["paragraph_product_ms_median"] = storage_products(rng, size, dim)
    return out


def edit_update(Session, rng: np.random.Generator, novel_id: int, dim: int, question: str) -> dict:
    """Seconds to bring the cached matrix up to date after an edit of one paragraph, its undo and its redo (the
    edited paragraph's rows dropped, its new ones added, the novel-wide values recomputed), and the first fused
    query after each (which also remakes the two-stage search's projection)."""
    with Session() as s:
        target = next(p for p in store.paragraphs(s, novel_id) if p.position == 2)
    out: dict[str, float] = {}
    changes = {
        "edit": lambda s: store.edit_paragraph(s, target.id, target.text + " Edited.", expected_version=target.version,
                                               embedding=Vector("bench", rng.normal(size=dim), sentences=rng.normal(
                                                   size=(6, dim)).astype(np.float32))),
        "undo": lambda s: revisions.undo(s, novel_id),
        "redo": lambda s: revisions.redo(s, novel_id)}
    for label, change in changes.items():
        with Session() as s, s.begin():
            change(s)
        with Session() as s:
            start = time.perf_counter()
            retrieval._load_matrix(s, s.get(Novel, novel_id), "bench", dim)
            out[f"{label}_matrix_update_s"] = round(time.perf_counter() - start, 2)
            start = time.perf_counter()
            retrieval.search(s, novel_id, Vector("bench", rng.normal(size=dim).astype(np.float32)), 5, text=question)
            out[f"{label}_first_query_ms"] = round(1000 * (time.perf_counter() - start), 1)
    return out


def storage_products(rng: np.random.Generator, size: int, dim: int) -> dict:
    """The first stage's one product [N, dim] @ [dim] per way of holding the matrix: float32 (as cached), float16
    and int8 (numpy has no BLAS for either: it loops), and float32 projected to PROJECTION_DIM."""
    vectors = rng.normal(size=(size, dim)).astype(np.float32)
    query = rng.normal(size=dim).astype(np.float32)
    forms = {"float32": (vectors, query), "float16": (vectors.astype(np.float16), query.astype(np.float16)),
             "int8": ((vectors * 32).astype(np.int8), (query * 32).astype(np.int8)),
             f"float32_projected_{retrieval.PROJECTION_DIM}": (
                 np.ascontiguousarray(vectors[:, :retrieval.PROJECTION_DIM]),
                 np.ascontiguousarray(query[:retrieval.PROJECTION_DIM]))}
    out = {}
    for label, (matrix, vector) in forms.items():
        times = []
        for _ in range(5):
            start = time.perf_counter()
            matrix @ vector
            times.append(1000 * (time.perf_counter() - start))
        out[label] = round(statistics.median(times), 2)
    return out


def matrix_bytes(session, novel_id: int, dim: int) -> dict:
    """What the cached matrix of a novel holds per paragraph, in memory, by part."""
    novel = session.get(Novel, novel_id)
    matrix = retrieval._load_matrix(session, novel, "bench", dim)
    count = matrix.vectors.shape[0]
    projection = matrix.projection.projected.nbytes if matrix.projection is not None else 0
    centering = sum(getattr(matrix.centering, name).nbytes for name in (
        "sentence_offsets", "sentence_norms", "window_norms", "paragraph_offsets", "paragraph_norms"))
    centering += matrix.sentence_squares.nbytes + matrix.paragraph_squares.nbytes
    if matrix.centering.sentence_hubness is not None:
        centering += matrix.centering.sentence_hubness.nbytes
    return {"paragraph_vectors": round(matrix.vectors.nbytes / count, 1),
            "sentence_vectors_float32": round(matrix.sentences.nbytes / count, 1),
            "projection": round(projection / count, 1),
            "centring_and_windows": round(
                (centering + matrix.window_norms.nbytes + matrix.window_next.nbytes) / count, 1)}


def default_lm_scorer(threads: int):
    """The LM rerank's scorer over the default GGUF loaded as the app loads it (models.service.load_generator:
    llama.cpp, through its Q8_0 copy), and the model's name."""
    # Imported here: llama.cpp and the app load only when the LM rerank is asked for.
    from app.engine.rerank import lm_scorer
    from app.offline import DEFAULT_LM_NAME, default_lm_path
    from models.service import ModelSpec, load_generator

    generator = load_generator(ModelSpec("gguf", str(default_lm_path()), DEFAULT_LM_NAME), device="cpu",
                               cache_dir=str(Path.home() / ".cache" / "longhand-bench"), threads=threads,
                               gguf_backend="llama.cpp")
    scorer, reason = lm_scorer(generator.backend, enabled=True)
    if scorer is None:
        raise RuntimeError(f"The LM rerank cannot run: {reason}")
    return scorer, f"{DEFAULT_LM_NAME} ({type(generator.backend).__name__} on {generator.backend.path.name}, " \
                   f"{threads} thread(s))"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "recall.json"))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for the embedder")
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--embedding-cache", default="",
                        help="an .npz of texts and their vectors read before and written after the run (reruns embed "
                             "less); one made with another embedder is refused")
    parser.add_argument("--embedder", default="default",
                        help="'default' (all-MiniLM-L6-v2, offline) or a local sentence-transformers folder, as the "
                             "app's --embedder")
    parser.add_argument("--lm-rerank", type=int, choices=(0, 1), default=1,
                        help="1: also the fused + LM rerank method (loads the default LM); 0: skip it")
    parser.add_argument("--lm-threads", type=int, default=1, help="llama.cpp threads for the LM rerank")
    parser.add_argument("--large", default=LARGE_DEFAULT,
                        help="paragraph counts for the latency-only runs, comma-separated (0: skip)")
    args = parser.parse_args(argv)
    import torch

    from app.offline import default_embedder_path

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_at_start = list(os.getloadavg())
    wall = time.perf_counter()
    sizes = [int(s) for s in args.sizes.split(",")]
    cache = EmbeddingCache(retrieval.Embedder(default_embedder_path() if args.embedder == "default"
                                              else Path(args.embedder)))
    if args.embedding_cache and Path(args.embedding_cache).is_file():
        cache.load(Path(args.embedding_cache))
    scorer, lm_name = None, None
    if args.lm_rerank:
        scorer, lm_name = default_lm_scorer(args.lm_threads)
    fillers = filler(max(sizes))
    dialogue = dialogue_filler(fillers)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        _, Session = open_database(f"sqlite:///{Path(tmp) / 'recall.db'}")
        for size in sizes:
            row = {"paragraphs": size}
            for variant, easy, pool in (("hard", False, fillers), ("hard_dialogue", False, dialogue),
                                        ("easy_needle", True, fillers)):
                texts, positions = manuscript(size, pool, easy)
                novel_id = build_novel(Session, cache, f"{variant} {size}", texts)
                row[variant] = measure(Session, cache, novel_id, texts, positions,
                                       scorer if variant == "hard" else None)
                if variant == "hard":
                    row["float16_vs_float32"] = float16_check(cache, texts, positions)
                    row["storage_per_paragraph"] = storage(Session, novel_id)
                print(f"{size:>5} {variant}: " + "; ".join(
                    f"{label} r@3 development {m['development']['recall@3']} test {m['test']['recall@3']}"
                    for label, m in row[variant].items()), flush=True)
            rows.append(row)
        large = [large_latency(Path(tmp), cache.embedder.dim, fillers, int(size))
                 for size in args.large.split(",") if int(size) > 0]
    for row in large:
        print(f"{row['paragraphs']} paragraphs: {row}", flush=True)
    if args.embedding_cache:
        cache.save(Path(args.embedding_cache))
    result = {
        "benchmark": "recall",
        "command": "python -m bench.recall " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": commit("memory", "bench"),
        "started_utc": started,
        "wall_seconds": round(time.perf_counter() - wall, 1),
        "machine": machine(torch_threads=args.threads, load_average_at_start=load_at_start,
                           load_average_at_end=list(os.getloadavg())),
        "embedder": cache.embedder.name,
        "embedding_seconds": round(cache.seconds, 1),
        "lm_rerank_model": lm_name,
        "lm_rerank_depth": rerank.RERANK_DEPTH if scorer is not None else None,
        "facts": len(FACTS),
        "held_out_facts": len(HELD_OUT_FACTS),
        "fresh_facts": len(FRESH_FACTS),
        "test_facts": len(TEST_FACTS),
        "what": __doc__.split("\n\n")[1].replace("\n", " "),
        "sizes": rows,
        "large": large,
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
