"""Long-range recall and summary faithfulness of the three memory tiers (issue 15), with the default model.

A synthesized manuscript (default 10 chapters x 30 paragraphs; writing it with the default model would take hours
on a CPU) with facts planted in chapters 1-2; chapters 1..N-1 are closed and summarized by the real default model
(prompts/chapter_summary.txt), the synopsis rebuilt from those summaries; then, in the open last chapter, one plan
per fact asks about it. For each plan the step's context is built twice with the real MiniLM embedder and
retrieval: flat (today's engine: short-term memory, top-k paragraphs, last paragraph) and with the tiers (plus the
synopsis, the chapter summaries most relevant to the plan, the open chapter's summary). A fact "reaches the
context" when its answer word is in the prompt text. Also the context tokens each uses.

Faithfulness: the share of named entities (capitalized names of the synthesized cast and places) introduced in a
chapter that its summary keeps, the share of the summaries' entities the synopsis keeps, and the copy rate: how
many summary sentences are a sentence of the chapter copied out (app.engine.parsing.copies_text).

    nice -n 10 python -m bench.chapters --out bench/results/chapters.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

CAST = ["Orla", "Tam", "Brannock", "Isolde", "Fenwick", "Marisol", "Caddock", "Yevgenia", "Perrin", "Delphine",
        "Osric", "Wren", "Halvard", "Sunniva", "Ambrose", "Talitha", "Corwin", "Ysolt", "Lorcan", "Elspeth"]
PLACES = ["Skerry", "Dunmore", "Kilbrack", "Ardnish", "Morvern", "Portnahaven", "Glenbarr", "Carradale",
          "Lochranza", "Inverkip"]
ACTIONS = ["mended the nets", "walked the cliff path", "argued about the weather", "counted the gulls",
           "carried water from the well", "read the old logbook", "watched the ferry come in", "lit the stove",
           "repaired the fence", "talked about the harvest", "rowed out past the rocks", "cleaned the lamp glass"]
MOODS = ["The wind was cold.", "Rain came in from the west.", "The sea was calm for once.", "Fog hid the harbour.",
         "The light was thin and grey.", "Gulls cried over the roofs."]
# (fact sentence, the word that answers it, the plan in the last chapter that asks about it)
FACTS = [
    ("Orla hid the brass key inside the blue teapot on the top shelf.", "teapot",
     "Orla needs the brass key she hid long ago and goes to fetch it."),
    ("Tam buried the captain's letters under the third fence post by the chapel.", "chapel",
     "Tam digs up the captain's letters he buried."),
    ("Isolde swore an oath never to sail past the black reef called the Widow.", "Widow",
     "Isolde must break her oath about the reef to save the ferry."),
    ("Brannock keeps a silver compass that belonged to his drowned brother Eamon.", "Eamon",
     "Brannock looks at the compass and thinks of his brother."),
    ("Fenwick owes the smuggler Grieve forty guineas and has told no one.", "Grieve",
     "The man Fenwick owes money to comes to collect the debt."),
    ("Marisol is allergic to heather honey and nearly died of it as a child.", "honey",
     "Marisol is offered a cake at the wedding and remembers what she cannot eat."),
]


def synthesize(chapters: int, per_chapter: int, seed: int) -> list[list[str]]:
    """`chapters` lists of `per_chapter` paragraphs; FACTS planted in chapters 1 and 2 (each once)."""
    rng = random.Random(seed)
    book = []
    for chapter in range(chapters):
        cast = rng.sample(CAST, 4)
        place = PLACES[chapter % len(PLACES)]
        paragraphs = []
        for _ in range(per_chapter):
            a, b = rng.sample(cast, 2)
            paragraphs.append(f"In {place}, {a} {rng.choice(ACTIONS)} while {b} {rng.choice(ACTIONS)}. "
                              f"{rng.choice(MOODS)} {a} said little, and {b} {rng.choice(ACTIONS)} before dark.")
        book.append(paragraphs)
    for index, (fact, _, _) in enumerate(FACTS):
        chapter = index % 2
        slot = 3 + (index // 2) * 7
        book[chapter][slot] = f"{book[chapter][slot].split('. ')[0]}. {fact}"
    return book


def entities(text: str) -> set[str]:
    names = set(CAST) | set(PLACES) | {"Eamon", "Grieve", "Widow"}
    return {word for word in re.findall(r"[A-Z][a-z]+", text) if word in names}


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chapters", type=int, default=10)
    parser.add_argument("--paragraphs", type=int, default=30, help="per chapter")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chapter-words", type=int, default=1200,
                        help="the most words of a chapter a summary prompt holds (the middle is cut first)")
    parser.add_argument("--attempts", type=int, default=3, help="tries per summary (the novel's max_attempts)")
    parser.add_argument("--out", default="bench/results/chapters.json")
    args = parser.parse_args(argv)
    load_at_start = list(os.getloadavg())

    from app.offline import enforce_offline

    enforce_offline()
    import torch

    torch.set_num_threads(args.threads)
    from app.config import Config, default_data_dir
    from app.engine.context import PROMPT_ONLY, build_context
    from app.engine.parsing import copies_text
    from app.engine.text import sentences
    from app.wiring import open_parts
    from memory import chapters as book_store
    from memory import store

    work = Path(tempfile.mkdtemp(prefix="longhand-chapters-"))
    config = Config(data_dir=work, database_url=f"sqlite:///{work / 'chapters.db'}", device="cpu", dtype="float32")
    parts = open_parts(config, models_dir=default_data_dir() / "models")
    session_factory = parts.session_factory
    engine = parts.engine(parts.models.generator())
    book = synthesize(args.chapters, args.paragraphs, args.seed)

    started = time.monotonic()
    with session_factory() as s, s.begin():
        novel_id = store.create_novel(s, "The Skerry Chronicle", premise="Islanders keep their secrets.",
                                      settings={"max_attempts": args.attempts, "sampling": {"seed": args.seed}}).id
    for index, paragraphs in enumerate(book):
        vectors = [engine.reader.passage_vector(text) for text in paragraphs]
        with session_factory() as s, s.begin():
            chapter = store.last_chapter(s, novel_id)
            for text, vector in zip(paragraphs, vectors):
                store.add_paragraph(s, novel_id, text, origin="imported", embedding=vector)
            if index < len(book) - 1:
                book_store.close_chapter(s, chapter.id)
    built = time.monotonic() - started

    print(f"manuscript built and embedded in {built:.0f}s", flush=True)
    summarizer = engine.summarizer(novel_id)
    summarizer.max_chapter_words = args.chapter_words
    summary_seconds = []
    outcomes = []
    with session_factory() as s:
        chapter_ids = [c.id for c in store.chapters(s, novel_id)]
    for chapter_id in chapter_ids[:-1]:
        t0 = time.monotonic()
        outcomes.append(summarizer.summarize_chapter(novel_id, chapter_id))
        summary_seconds.append(time.monotonic() - t0)
        print(f"chapter {len(outcomes)}: {summary_seconds[-1]:.0f}s saved={outcomes[-1].saved}", flush=True)
    t0 = time.monotonic()
    synopsis = summarizer.rebuild_synopsis(novel_id)
    synopsis_seconds = time.monotonic() - t0

    view = engine.reader.read(novel_id)
    budget = engine._budget(view)
    recall = []
    for fact, answer, plan in FACTS:
        inputs = engine.reader.step_inputs(view, plan, "write", PROMPT_ONLY)
        flat_inputs = replace(inputs, synopsis="", chapters=[], chapter_so_far="")
        tiers = build_context(engine.prompts, engine.generator, inputs, budget)
        flat = build_context(engine.prompts, engine.generator, flat_inputs, budget)
        summaries_text = " ".join(s.text for s in tiers.sections if s.name in ("synopsis", "chapters",
                                                                                "chapter_so_far"))
        recall.append({"fact": fact, "answer": answer, "plan": plan,
                       "flat_hit": answer in flat.prompt_text, "tiers_hit": answer in tiers.prompt_text,
                       "in_summaries": answer in summaries_text,
                       "flat_tokens": flat.total_tokens, "tiers_tokens": tiers.total_tokens,
                       "tiers_sections": {s.name: s.tokens for s in tiers.sections}})

    faithfulness = []
    summary_entities: set[str] = set()
    for chapter_id, paragraphs, outcome in zip(chapter_ids, book, outcomes):
        chapter_entities = entities(" ".join(paragraphs))
        kept = entities(outcome.text) & chapter_entities
        summary_entities |= entities(outcome.text)
        parts_ = sentences(outcome.text) if outcome.text else []
        copied = sum(1 for part in parts_ if copies_text(part, "\n\n".join(paragraphs)))
        faithfulness.append({"chapter_id": chapter_id, "saved": outcome.saved, "notice": outcome.notice,
                             "summary": outcome.text, "entities_in_chapter": len(chapter_entities),
                             "entity_share": round(len(kept) / max(1, len(chapter_entities)), 3),
                             "sentences": len(parts_), "copied_sentences": copied})
    synopsis_share = len(entities(synopsis.text) & summary_entities) / max(1, len(summary_entities))
    n = len(recall)
    sentences_total = sum(f["sentences"] for f in faithfulness)
    result = {
        "benchmark": "chapters",
        "command": "python -m bench.chapters " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads,
                    "load_average_at_start": load_at_start, "load_average_now": list(os.getloadavg())},
        "model": engine.generator.name,
        "requested": {"chapter_words": args.chapter_words, "attempts": args.attempts, "seed": args.seed},
        "manuscript": {"chapters": args.chapters, "paragraphs": args.chapters * args.paragraphs,
                       "facts": len(FACTS), "facts_in_chapters": [1, 2], "asked_in_chapter": args.chapters},
        "context_budget": budget,
        "recall": {"flat": sum(r["flat_hit"] for r in recall) / n, "tiers": sum(r["tiers_hit"] for r in recall) / n,
                   "in_summaries_only": sum(r["in_summaries"] for r in recall) / n,
                   "mean_tokens_flat": round(sum(r["flat_tokens"] for r in recall) / n, 1),
                   "mean_tokens_tiers": round(sum(r["tiers_tokens"] for r in recall) / n, 1),
                   "per_fact": recall},
        "faithfulness": {"chapter_entity_share": round(sum(f["entity_share"] for f in faithfulness)
                                                       / max(1, len(faithfulness)), 3),
                         "synopsis_entity_share": round(synopsis_share, 3),
                         "copy_rate": round(sum(f["copied_sentences"] for f in faithfulness)
                                            / max(1, sentences_total), 3),
                         "summaries_saved": sum(f["saved"] for f in faithfulness),
                         "synopsis": synopsis.text, "synopsis_saved": synopsis.saved,
                         "synopsis_notice": synopsis.notice, "per_chapter": faithfulness},
        "seconds": {"build_and_embed": round(built, 1),
                    "per_summary": round(sum(summary_seconds) / max(1, len(summary_seconds)), 1),
                    "synopsis": round(synopsis_seconds, 1)},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("recall", "faithfulness", "seconds")}, indent=1)[:3000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
