"""Long-range recall and summary faithfulness of the three memory tiers (issue 15), with the default model.

A synthesized manuscript (default 10 chapters x 30 paragraphs; writing it with the default model would take hours on
a CPU) with facts planted in chapters 1-2; chapters 1..N-1 are closed and summarized by the real default model
(prompts/chapter_summary.txt), the synopsis rebuilt from those summaries; then, in the open last chapter, two plans
per fact ask about it: a direct one (it shares words with the fact) and an indirect one (only the character's name).
For each plan the step's context is built twice with the real MiniLM embedder and retrieval: flat (today's engine:
short-term memory, top-k paragraphs, last paragraph) and with the tiers (plus the synopsis, the chapter summaries
most relevant to the plan, the open chapter's summary). A fact "reaches the context" when its answer word is in the
prompt text. Also the context tokens each uses.

The short-term memory is empty in both arms (no step was written; the synthesized paragraphs are imported), so
"flat" is retrieval plus the last paragraph, and the tiers add only what the summaries say.

Faithfulness: the share of named entities (capitalized names of the synthesized cast and places) of a chapter that
its summary keeps (all of the chapter's, and those it introduces: first seen in it), the share of the summaries'
entities the synopsis keeps, and copying: every answer the model gave (the rejected tries too, recorded by a wrapper
around the generator) is checked sentence by sentence with app.engine.parsing.copies_text; the summarizer refuses an
answer most of whose sentences are copied, so the copy figures are given before and after that guard.

    nice -n 10 python -m bench.chapters --attempts 1 --out bench/results/chapters.json
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
# The same facts asked about indirectly: the plan names the character but none of the fact's own words, so
# retrieval by the plan alone is less likely to find the paragraph that planted it.
INDIRECT_PLANS = {
    "teapot": "Orla searches the kitchen at night.",
    "chapel": "Tam goes out after dark with a spade.",
    "Widow": "Isolde takes the ferry out into the storm.",
    "Eamon": "Brannock remembers the day the sea took his family.",
    "Grieve": "A smuggler knocks on Fenwick's door.",
    "honey": "Marisol is served breakfast at the inn.",
}


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


class RecordingGenerator:
    """The model, unchanged, with every answer it streams kept in `answers` (the summarizer's rejected tries too)."""

    def __init__(self, inner):
        self.inner = inner
        self.answers: list[str] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def stream(self, prompt, **kwargs):
        pieces = []
        for piece in self.inner.stream(prompt, **kwargs):
            pieces.append(piece)
            yield piece
        self.answers.append("".join(pieces))


def copied_sentences(text: str, source: str) -> tuple[int, int]:
    """(sentences of `text` that copy a sentence of `source`, sentences of `text`)."""
    # Imported here like main's imports: nothing of app loads before enforce_offline() has run.
    from app.engine.parsing import copies_text
    from app.engine.text import sentences

    parts = sentences(text) if text.strip() else []
    return sum(1 for part in parts if copies_text(part, source)), len(parts)


def entities(text: str) -> set[str]:
    names = set(CAST) | set(PLACES) | {"Eamon", "Grieve", "Widow"}
    return {word for word in re.findall(r"[A-Z][a-z]+", text) if word in names}


def recall_figures(rows: list[dict]) -> dict:
    """How often the answer reached the context, flat and with the tiers; how often the tiers' summaries alone
    held it; the mean context tokens of each."""
    n = max(1, len(rows))
    return {"plans": len(rows), "flat": round(sum(r["flat_hit"] for r in rows) / n, 3),
            "tiers": round(sum(r["tiers_hit"] for r in rows) / n, 3),
            "in_summaries": round(sum(r["in_summaries"] for r in rows) / n, 3),
            "mean_tokens_flat": round(sum(r["flat_tokens"] for r in rows) / n, 1),
            "mean_tokens_tiers": round(sum(r["tiers_tokens"] for r in rows) / n, 1)}


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
    parser.add_argument("--prompts-dir", default=None,
                        help="a prompts folder to measure instead of prompts/ (to compare a changed template)")
    parser.add_argument("--out", default="bench/results/chapters.json")
    args = parser.parse_args(argv)
    load_at_start = list(os.getloadavg())

    from app.offline import enforce_offline

    enforce_offline()
    import torch

    torch.set_num_threads(args.threads)
    from app.config import Config, default_data_dir
    from app.engine.context import PROMPT_ONLY, build_context
    from app.engine.prompts import PromptLibrary
    from app.wiring import open_parts
    from memory import chapters as book_store
    from memory import store

    work = Path(tempfile.mkdtemp(prefix="longhand-chapters-"))
    config = Config(data_dir=work, database_url=f"sqlite:///{work / 'chapters.db'}", device="cpu", dtype="float32")
    parts = open_parts(config, models_dir=default_data_dir() / "models")
    session_factory = parts.session_factory
    engine = parts.engine(parts.models.generator())
    if args.prompts_dir is not None:
        engine.prompts = PromptLibrary(args.prompts_dir)
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
    recorder = RecordingGenerator(summarizer.generator)
    summarizer.generator = recorder
    summary_seconds = []
    outcomes = []
    answers_by_chapter = []
    with session_factory() as s:
        chapter_ids = [c.id for c in store.chapters(s, novel_id)]
    for chapter_id in chapter_ids[:-1]:
        t0 = time.monotonic()
        recorder.answers = []
        outcomes.append(summarizer.summarize_chapter(novel_id, chapter_id))
        answers_by_chapter.append(list(recorder.answers))
        summary_seconds.append(time.monotonic() - t0)
        print(f"chapter {len(outcomes)}: {summary_seconds[-1]:.0f}s saved={outcomes[-1].saved} "
              f"tries={len(recorder.answers)} {outcomes[-1].notice}", flush=True)
    t0 = time.monotonic()
    recorder.answers = []
    synopsis = summarizer.rebuild_synopsis(novel_id)
    synopsis_answers = list(recorder.answers)
    synopsis_seconds = time.monotonic() - t0

    view = engine.reader.read(novel_id)
    budget = engine._budget(view)
    recall = []
    asked = [(fact, answer, plan, "direct") for fact, answer, plan in FACTS] + \
            [(fact, answer, INDIRECT_PLANS[answer], "indirect") for fact, answer, _ in FACTS]
    for fact, answer, plan, kind in asked:
        inputs = engine.reader.step_inputs(view, plan, "write", PROMPT_ONLY)
        flat_inputs = replace(inputs, synopsis="", chapters=[], chapter_so_far="")
        tiers = build_context(engine.prompts, engine.generator, inputs, budget)
        flat = build_context(engine.prompts, engine.generator, flat_inputs, budget)
        summaries_text = " ".join(s.text for s in tiers.sections if s.name in ("synopsis", "chapters",
                                                                                "chapter_so_far"))
        recall.append({"fact": fact, "answer": answer, "plan": plan, "plan_kind": kind,
                       "flat_hit": answer in flat.prompt_text, "tiers_hit": answer in tiers.prompt_text,
                       "in_summaries": answer in summaries_text,
                       "flat_tokens": flat.total_tokens, "tiers_tokens": tiers.total_tokens,
                       "tiers_sections": {s.name: s.tokens for s in tiers.sections}})

    faithfulness = []
    summary_entities: set[str] = set()
    seen: set[str] = set()
    for chapter_id, paragraphs, outcome, answers in zip(chapter_ids, book, outcomes, answers_by_chapter):
        source = "\n\n".join(paragraphs)
        chapter_entities = entities(source)
        introduced = chapter_entities - seen
        seen |= chapter_entities
        in_summary = entities(outcome.text)
        summary_entities |= in_summary
        copied, count = copied_sentences(outcome.text, source)
        tries = [copied_sentences(answer, source) for answer in answers]
        faithfulness.append({
            "chapter_id": chapter_id, "saved": outcome.saved, "notice": outcome.notice, "summary": outcome.text,
            "entities_in_chapter": sorted(chapter_entities), "entities_introduced": sorted(introduced),
            "entities_in_summary": sorted(in_summary),
            "entity_share": round(len(in_summary & chapter_entities) / max(1, len(chapter_entities)), 3),
            "introduced_share": (round(len(in_summary & introduced) / len(introduced), 3) if introduced else None),
            "sentences": count, "copied_sentences": copied,
            "answers": [{"text": answer, "sentences": n_all, "copied_sentences": n_copied,
                         "mostly_copied": n_all > 0 and n_copied * 2 > n_all}
                        for answer, (n_copied, n_all) in zip(answers, tries)]})
    synopsis_share = len(entities(synopsis.text) & summary_entities) / max(1, len(summary_entities))
    saved = [f for f in faithfulness if f["saved"]]
    sentences_total = sum(f["sentences"] for f in saved)
    all_answers = [a for f in faithfulness for a in f["answers"]]
    introduced_shares = [f["introduced_share"] for f in faithfulness if f["introduced_share"] is not None]
    result = {
        "benchmark": "chapters",
        "command": "python -m bench.chapters " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads,
                    "load_average_at_start": load_at_start, "load_average_now": list(os.getloadavg())},
        "model": engine.generator.name,
        "requested": {"chapter_words": args.chapter_words, "attempts": args.attempts, "seed": args.seed,
                      "prompts_dir": str(engine.prompts.prompts_dir)},
        "manuscript": {"chapters": args.chapters, "paragraphs": args.chapters * args.paragraphs,
                       "facts": len(FACTS), "facts_in_chapters": [1, 2], "asked_in_chapter": args.chapters},
        "context_budget": budget,
        "recall": {**{kind: recall_figures([r for r in recall if r["plan_kind"] == kind])
                      for kind in ("direct", "indirect")}, "per_fact": recall},
        "short_term_memory": view.memory,
        "faithfulness": {
            "summaries_requested": len(faithfulness), "summaries_saved": len(saved),
            # Over the saved summaries (a chapter whose summary was refused has none to keep names in).
            "chapter_entity_share": round(sum(f["entity_share"] for f in saved) / max(1, len(saved)), 3),
            "introduced_entity_share": round(sum(f["introduced_share"] for f in saved
                                                 if f["introduced_share"] is not None)
                                             / max(1, sum(1 for f in saved if f["introduced_share"] is not None)),
                                             3),
            "introduced_entity_share_all_chapters": round(sum(introduced_shares) / max(1, len(introduced_shares)),
                                                          3),
            "synopsis_entity_share": round(synopsis_share, 3),
            # After the guard: copied sentences among the saved summaries' sentences, and saved summaries with any.
            "copy_rate": round(sum(f["copied_sentences"] for f in saved) / max(1, sentences_total), 3),
            "summaries_with_a_copied_sentence": round(sum(1 for f in saved if f["copied_sentences"])
                                                      / max(1, len(saved)), 3),
            # Before the guard: every answer the model gave, rejected tries included.
            "answers": len(all_answers),
            "answers_mostly_copied": round(sum(a["mostly_copied"] for a in all_answers) / max(1, len(all_answers)),
                                           3),
            "answers_with_a_copied_sentence": round(sum(1 for a in all_answers if a["copied_sentences"])
                                                    / max(1, len(all_answers)), 3),
            "answer_sentences_copied": round(sum(a["copied_sentences"] for a in all_answers)
                                             / max(1, sum(a["sentences"] for a in all_answers)), 3),
            "synopsis": synopsis.text, "synopsis_saved": synopsis.saved, "synopsis_notice": synopsis.notice,
            "synopsis_answers": synopsis_answers, "per_chapter": faithfulness},
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
