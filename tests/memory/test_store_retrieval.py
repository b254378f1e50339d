"""Retrieval: top-k by cosine over stored vectors, cache invalidation, lore triggers, and the needle test with the
real all-MiniLM-L6-v2 embedder."""

from __future__ import annotations

import random

import numpy as np
import pytest

from memory import embeddings, retrieval, revisions, store
from memory.embeddings import Vector


def unit(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    return values / np.linalg.norm(values)


def test_top_k_orders_by_cosine_and_respects_exclusions(Session):
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(30, 16))
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Vectors").id
        for i in range(30):
            store.add_paragraph(s, novel_id, f"paragraph {i + 1}", embedding=Vector("e", basis[i]))
        # Another embedder's vectors never mix in, even with the same dimension.
        embeddings.set_paragraph_embedding(s, store.paragraph_at(s, novel_id, 1).id, Vector("other", basis[7]))
    query = basis[7] + 0.05 * rng.normal(size=16)
    expected = np.argsort(-(np.stack([unit(b) for b in basis]) @ unit(query)))
    with Session() as s:
        found = retrieval.top_k(s, novel_id, Vector("e", query), 5)
        assert [p.position for p, _ in found] == [int(i) + 1 for i in expected[:5]]
        scores = [score for _, score in found]
        assert scores == sorted(scores, reverse=True) and scores[0] > 0.95
        skipped = retrieval.top_k(s, novel_id, Vector("e", query), 3, exclude_positions=[8])
        assert 8 not in [p.position for p, _ in skipped]
        assert retrieval.top_k(s, novel_id, Vector("missing", query), 3) == []
        assert len(retrieval.top_k(s, novel_id, Vector("e", query), 100)) == 30
        with pytest.raises(ValueError, match="embedder"):
            retrieval.top_k(s, novel_id, query, 3)


def test_cached_vectors_follow_edits_and_undo(Session):
    a, b = np.eye(4)[0], np.eye(4)[1]
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Cache").id
        first = store.add_paragraph(s, novel_id, "about a", embedding=Vector("e", a))
        store.add_paragraph(s, novel_id, "about b", embedding=Vector("e", b))
    query = Vector("e", a)
    with Session() as s:
        assert retrieval.top_k(s, novel_id, query, 1)[0][0].id == first.id
    # Appending (what a step does) updates the cached matrix with just the new row.
    with Session() as s, s.begin():
        appended = store.add_paragraph(s, novel_id, "closest to a", embedding=Vector("e", a + 0.01 * b))
    with Session() as s:
        found = [(p.id, round(score, 5)) for p, score in retrieval.top_k(s, novel_id, query, 3, exclude_positions=[1])]
        retrieval.clear_cache()
        assert found == [(p.id, round(score, 5))
                         for p, score in retrieval.top_k(s, novel_id, query, 3, exclude_positions=[1])]
        assert found[0][0] == appended.id and len(found) == 2
    with Session() as s, s.begin():
        revisions.undo(s, novel_id)
    with Session() as s:
        assert [p.id for p, _ in retrieval.top_k(s, novel_id, query, 3)] == [first.id, first.id + 1]
    with Session() as s, s.begin():
        store.edit_paragraph(s, first.id, "now about b", 1, embedding=Vector("e", b))
    with Session() as s:
        top = retrieval.top_k(s, novel_id, query, 2)
        assert all(score < 0.5 for _, score in top)
    with Session() as s, s.begin():
        revisions.undo(s, novel_id)
    with Session() as s:
        paragraph, score = retrieval.top_k(s, novel_id, query, 1)[0]
        assert paragraph.id == first.id and score == pytest.approx(1.0)
    with Session() as s, s.begin():
        store.add_paragraph(s, novel_id, "inserted first, about a too", position=1, embedding=Vector("e", a))
        store.edit_paragraph(s, first.id, "no vector now", 1)
    with Session() as s:
        updated = [(p.id, p.position, round(score, 5)) for p, score in retrieval.top_k(s, novel_id, query, 5)]
        retrieval.clear_cache()
        assert updated == [(p.id, p.position, round(score, 5)) for p, score in retrieval.top_k(s, novel_id, query, 5)]
        assert first.id not in [row[0] for row in updated] and updated[0][1] == 1
        assert [p.id for p in embeddings.paragraphs_missing_embedding(s, novel_id, "e")] == [first.id]


def test_lore_keys_trigger_as_whole_words_case_insensitively(Session):
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Lore").id
        store.add_lore(s, novel_id, "Ann", ["Ann"], "Ann is the ferrywoman.")
        store.add_lore(s, novel_id, "Red Keep", "red keep, the citadel", "The Red Keep burned.")
        store.add_lore(s, novel_id, "Rules", [], "Magic costs memories.", always_on=True)
        store.add_lore(s, novel_id, "Hidden", ["ferry"], "Disabled entry.", enabled=False)
        store.add_lore(s, novel_id, "Zoë", ["Zoë"], "Zoë is a cartographer.")

    def names(text):
        with Session() as s:
            return [e.name for e in retrieval.triggered_lore(s, novel_id, text)]

    assert names("The banner of Anna waved over the ferry.") == ["Rules"]
    assert names("ANN's boat reached the RED\n KEEP at dusk.") == ["Rules", "Ann", "Red Keep"]
    assert names("Beyond the Citadel, zoë waited.") == ["Rules", "Red Keep", "Zoë"]
    assert names("Zoëlla and Zoe.") == ["Rules"]


def test_lore_triggers_by_similarity_with_the_real_embedder(Session, embedder):
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Similar").id
        body = "The harbor of Vell freezes solid every winter; ships are hauled onto the ice."
        entry = store.add_lore(s, novel_id, "Harbor", ["Vell"], body, embedding=embedder.vector(body))
        other = "Grandmother's recipe for plum dumplings uses cardamom."
        store.add_lore(s, novel_id, "Recipe", ["dumplings"], other, embedding=embedder.vector(other))
    text = "The sailors dragged their boats across the frozen port as the cold season began."
    with Session() as s:
        found = retrieval.triggered_lore(s, novel_id, text, embedder.vector(text))
        assert [e.id for e in found] == [entry.id]
        assert retrieval.triggered_lore(s, novel_id, text) == []


NAMES = ["Tomas", "Ilse", "Bram", "Odile", "Kasimir", "Renata", "Jory", "Wen", "Mira", "Dov"]
PLACES = ["the market square", "the mill by the river", "the salt marshes", "the lighthouse stairs", "the forge",
          "the abbey library", "the ferry landing", "the orchard", "the barracks", "the fishmonger's stall"]
EVENTS = [
    "{a} argued with {b} about the price of grain at {p}, and neither would give an inch.",
    "Rain hammered {p} while {a} mended a torn sail and hummed an old shanty.",
    "{a} taught {b} to play dice at {p}, losing three coppers on purpose.",
    "At {p}, {a} read a letter from the capital twice and then burned it in silence.",
    "{a} and {b} carried sacks of barley to {p} before the storm broke over the hills.",
    "A stray dog followed {a} through {p}; {b} laughed and named it Captain.",
    "{a} sketched the gulls over {p}, trying to capture how they hung on the wind.",
    "The bells rang noon as {a} haggled with {b} at {p} over a bolt of blue wool.",
    "{a} confessed to {b} at {p} that the harvest would be thin this year.",
    "Smoke drifted across {p} while {a} sharpened knives and {b} counted the catch.",
    "{a} fell asleep at {p} reading about distant deserts and dreamed of camels.",
    "A traveling juggler performed at {p}; {a} tossed him a coin and {b} frowned.",
]
NEEDLE = ("Before dawn, Mira tucked the brass key of the lighthouse into a hollow of the ancient oak behind the "
          "chapel, and she told no one where it was.")
QUESTION = "Where did Mira conceal the lighthouse key?"


def generated_paragraphs(count: int = 300, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    paragraphs = []
    for _ in range(count):
        a, b = rng.sample(NAMES, 2)
        sentences = [rng.choice(EVENTS).format(a=a, b=b, p=rng.choice(PLACES)) for _ in range(rng.randint(2, 4))]
        paragraphs.append(" ".join(sentences))
    paragraphs[2] = NEEDLE
    return paragraphs


def test_needle_in_a_300_paragraph_novel(sqlite_url, embedder):
    # SQLite only: retrieval is the same numpy code on every backend (PostgreSQL runs the tests above), and
    # embedding 300 paragraphs is the slow part.
    from memory.db import open_database

    texts = generated_paragraphs()
    assert len(set(texts)) > 290 and sum("key" in t for t in texts) == 1
    vectors = embedder.embed(texts)
    _, Session = open_database(sqlite_url)
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Needle").id
        for text, vector in zip(texts, vectors):
            store.add_paragraph(s, novel_id, text, embedding=Vector(embedder.name, vector))
    with Session() as s:
        found = retrieval.top_k(s, novel_id, embedder.vector(QUESTION), 3)
        assert 3 in [p.position for p, _ in found]
        assert found[[p.position for p, _ in found].index(3)][0].text == NEEDLE


def test_embedder_is_local_normalized_and_named(embedder):
    vectors = embedder.embed(["The cat sat.", "A cat was sitting.", "Quarterly tax filing deadlines."])
    assert vectors.shape == (3, embedder.dim) and vectors.dtype == np.float32 and embedder.dim == 384
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    assert embedder.name == "all-MiniLM-L6-v2"
    with pytest.raises(retrieval.EmbedderError, match="config.json"):
        retrieval.Embedder(embedder.path.parent / "no-such-folder")


def test_embed_missing_fills_paragraphs_and_lore_once(Session, embedder):
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Backfill").id
        store.add_paragraph(s, novel_id, "The ferry sank in the storm.")
        store.add_paragraph(s, novel_id, "Bread was baked at dawn.", embedding=embedder.vector("Bread was baked."))
        store.add_lore(s, novel_id, "Storms", ["storm"], "Autumn storms wreck boats on the reef.")
    with Session() as s, s.begin():
        assert retrieval.embed_missing(s, novel_id, embedder) == 2
    with Session() as s, s.begin():
        assert retrieval.embed_missing(s, novel_id, embedder) == 0
    query = embedder.vector("a boat went down in bad weather")
    with Session() as s:
        assert retrieval.top_k(s, novel_id, query, 1)[0][0].position == 1
        assert [e.name for e in retrieval.triggered_lore(s, novel_id, "calm seas", query)] == ["Storms"]
