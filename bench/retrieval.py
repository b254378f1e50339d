"""Long-term memory benchmarks on this CPU: top-k retrieval latency, and embed-new-only vs re-embed-all per step.

- Top-k latency at 1k, 10k and 100k paragraphs of one novel in a real SQLite file (384-dim unit vectors, as
  all-MiniLM-L6-v2 makes): `memory.retrieval.top_k` cold (vectors read from the database, cache empty) and warm
  (the novel's matrix cached), and right after a step added one paragraph (only the new vector is read), median
  of REPEATS each. The store is filled with
  bulk inserts; the vectors are random because retrieval cost does not depend on what they mean.
- Embedding cost per generation step with the real MiniLM: Longhand embeds only the new paragraph; RecurrentGPT
  re-embeds every paragraph of the novel each step. Both are measured directly at 100 and 1,000 paragraphs of
  ~100 words, no sampling or extrapolation; the ratio is re-embed-all / embed-new. Embedding the new paragraph is
  timed 5 times, re-embedding all 3 times at 100 and once at 1,000 (minutes on 2 cores), interleaved so machine
  load hits both alike; each figure is the median of its runs.

    python -m bench.retrieval --out bench/results/retrieval.json
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

from bench.report import machine, write_result  # noqa: E402
from memory import retrieval, store  # noqa: E402
from memory.embeddings import Vector  # noqa: E402
from memory.db import open_database  # noqa: E402
from memory.schema import Embedding, Novel, Paragraph, utcnow  # noqa: E402
from sqlalchemy import update  # noqa: E402

SIZES = (1_000, 10_000, 100_000)
EMBED_SIZES = (100, 1_000)
DIM = 384
K = 5
REPEATS = 7
# Re-embedding 1,000 paragraphs takes minutes on 2 busy cores: one repeat there, three at 100.
EMBED_REPEATS = {100: 3, 1_000: 1}
NEW_ONLY_REPEATS = 5

NAMES = ["Tomas", "Ilse", "Bram", "Odile", "Kasimir", "Renata", "Jory", "Wen", "Mira", "Dov", "Aster", "Quill"]
PLACES = ["the market square", "the mill by the river", "the salt marshes", "the lighthouse stairs", "the forge",
          "the abbey library", "the ferry landing", "the orchard", "the barracks", "the fishmonger's stall"]
SENTENCES = [
    "{a} argued with {b} about the price of grain at {p}, and neither would give an inch.",
    "Rain hammered {p} while {a} mended a torn sail and hummed an old shanty under their breath.",
    "{a} taught {b} to play dice at {p}, losing three coppers on purpose to keep the peace.",
    "At {p}, {a} read a letter from the capital twice and then burned it without a word.",
    "{a} and {b} carried sacks of barley to {p} before the storm broke over the hills.",
    "A stray dog followed {a} through {p}; {b} laughed and named it Captain.",
    "{a} sketched the gulls over {p}, trying to capture how they hung on the wind.",
    "The bells rang noon as {a} haggled with {b} at {p} over a bolt of blue wool.",
    "{a} confessed to {b} at {p} that the harvest would be thin again this year.",
    "Smoke drifted across {p} while {a} sharpened knives and {b} counted the catch.",
]


def paragraphs(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words, parts = 0, []
        while words < 100:
            a, b = rng.sample(NAMES, 2)
            sentence = rng.choice(SENTENCES).format(a=a, b=b, p=rng.choice(PLACES))
            parts.append(sentence)
            words += len(sentence.split())
        out.append(" ".join(parts))
    return out


def fill(Session, novel_id: int, count: int, rng: np.random.Generator) -> None:
    """Bulk-insert `count` paragraphs with unit vectors (no history: this measures reading, not writing)."""
    vectors = rng.normal(size=(count, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    now = utcnow()
    with Session() as s, s.begin():
        s.execute(Paragraph.__table__.insert(), [
            {"novel_id": novel_id, "position": i + 1, "text": f"paragraph {i + 1}", "words": 2,
             "origin": "generated", "version": 1, "created_at": now, "updated_at": now} for i in range(count)])
        ids = [p.id for p in store.paragraphs(s, novel_id)]
        s.execute(Embedding.__table__.insert(), [
            {"novel_id": novel_id, "paragraph_id": pid, "embedder": "bench", "dim": DIM,
             "vector": vectors[i].astype("<f4").tobytes(), "created_at": now} for i, pid in enumerate(ids)])
        s.execute(update(Novel).where(Novel.id == novel_id).values(embedding_epoch=Novel.embedding_epoch + 1))


def bench_top_k(workdir: Path) -> list[dict]:
    _, Session = open_database(f"sqlite:///{workdir / 'bench.db'}")
    rng = np.random.default_rng(0)
    results = []
    for size in SIZES:
        with Session() as s, s.begin():
            novel_id = store.create_novel(s, f"{size} paragraphs").id
        fill(Session, novel_id, size, rng)
        query = Vector("bench", rng.normal(size=DIM))
        cold, warm = [], []
        for _ in range(REPEATS):
            retrieval.clear_cache()
            with Session() as s:
                start = time.perf_counter()
                found = retrieval.top_k(s, novel_id, query, K)
                cold.append(time.perf_counter() - start)
            with Session() as s:
                start = time.perf_counter()
                again = retrieval.top_k(s, novel_id, query, K)
                warm.append(time.perf_counter() - start)
            assert [p.id for p, _ in found] == [p.id for p, _ in again] and len(found) == K
        # A step adds one paragraph with its vector: the next top-k reads just that vector, not the whole novel.
        after_step = []
        for _ in range(REPEATS):
            with Session() as s, s.begin():
                store.add_paragraph(s, novel_id, "one more", embedding=Vector("bench", rng.normal(size=DIM)))
            with Session() as s:
                start = time.perf_counter()
                retrieval.top_k(s, novel_id, query, K)
                after_step.append(time.perf_counter() - start)
        results.append({"paragraphs": size, "k": K, "dim": DIM,
                        "cold_ms_median": round(1000 * statistics.median(cold), 3),
                        "warm_ms_median": round(1000 * statistics.median(warm), 3),
                        "after_one_new_paragraph_ms_median": round(1000 * statistics.median(after_step), 3),
                        "cold_ms_all": [round(1000 * t, 3) for t in cold],
                        "warm_ms_all": [round(1000 * t, 3) for t in warm]})
        print(f"top-{K} over {size:>7} paragraphs: cold {results[-1]['cold_ms_median']:.2f} ms, "
              f"warm {results[-1]['warm_ms_median']:.2f} ms, after a new paragraph "
              f"{results[-1]['after_one_new_paragraph_ms_median']:.2f} ms", flush=True)
    return results


def bench_embedding() -> dict:
    from app.offline import default_embedder_path

    embedder = retrieval.Embedder(default_embedder_path())
    texts = paragraphs(max(EMBED_SIZES) + 1, seed=1)
    embedder.embed(texts[:8])  # warm-up
    out = {"embedder": embedder.name, "torch_threads": _torch_threads(), "words_per_paragraph": 100,
           "sizes": []}
    for size in EMBED_SIZES:
        novel, new = texts[:size], texts[size]
        new_only, all_again = [], []
        for repeat in range(max(EMBED_REPEATS[size], NEW_ONLY_REPEATS)):
            start = time.perf_counter()
            embedder.embed([new])
            new_only.append(time.perf_counter() - start)
            if repeat < EMBED_REPEATS[size]:
                start = time.perf_counter()
                embedder.embed(novel + [new])
                all_again.append(time.perf_counter() - start)
        row = {"paragraphs": size, "embed_new_only_s_median": round(statistics.median(new_only), 4),
               "reembed_all_s_median": round(statistics.median(all_again), 3),
               "ratio_reembed_all_over_new_only": round(statistics.median(all_again) / statistics.median(new_only),
                                                        1),
               "embed_new_only_s_all": [round(t, 4) for t in new_only],
               "reembed_all_s_all": [round(t, 3) for t in all_again]}
        out["sizes"].append(row)
        print(f"{size:>5} paragraphs: new only {row['embed_new_only_s_median'] * 1000:.1f} ms, re-embed all "
              f"{row['reembed_all_s_median']:.2f} s, ratio {row['ratio_reembed_all_over_new_only']}x", flush=True)
    return out


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "retrieval.json"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for the embedder (default 1: on a shared 2-core machine, two "
                             "spinning threads make a one-paragraph batch wait on descheduled peers)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        top_k = bench_top_k(Path(tmp))
    embedding = bench_embedding()
    result = {
        "command": f"python -m bench.retrieval --out bench/results/retrieval.json --threads {args.threads}",
        "started_utc": started,
        "machine": machine(torch_threads=args.threads, load_average_at_start=list(load),
                           load_average_at_end=list(os.getloadavg())),
        "top_k_latency": {"what": "memory.retrieval.top_k on an SQLite file; cold = vectors read from the "
                                  "database (cache cleared), warm = the novel's matrix cached, after_one_new_paragraph "
                                  "= cache updated with the one vector a step added", "rows": top_k},
        "embedding_per_step": {"what": "seconds to embed the new paragraph only (Longhand) vs every paragraph "
                                       "again (RecurrentGPT), real all-MiniLM-L6-v2 on CPU", **embedding},
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
