"""Lexical retrieval: the full-text index (SQLite FTS5, PostgreSQL tsvector) follows every write, undo and redo;
rare words; and the fused ranking on hand-made cases where only the lexical side or only the vectors find the
paragraph. SQLite and the real PostgreSQL, the real all-MiniLM-L6-v2."""

from __future__ import annotations

import pytest

from memory import retrieval, revisions, store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def lexical_positions(Session, novel_id: int, query: str) -> list[int]:
    with Session() as s:
        ids = [pid for pid, _ in retrieval.lexical_top_k(s, novel_id, query, 10)]
        return [store.get_paragraph(s, pid).position for pid in ids]


def test_query_terms_drop_stopwords_and_repeats():
    assert retrieval.query_terms("Where did the keeper hide the KEY, the key?") == ["keeper", "hide", "key"]
    assert retrieval.query_terms("\"quoted\" OR NEAR(x) *") == ["quoted", "near"]


def test_full_text_index_follows_edits_deletes_undo_and_redo(Session):
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Index").id
        store.add_paragraph(s, novel_id, "The lamp burned all night over the cove.")
        second = store.add_paragraph(s, novel_id, "Zorvath climbed the stairs with a lantern.")
        store.add_paragraph(s, novel_id, "Bread cooled on the sill.")
        other = store.create_novel(s, "Other").id
        store.add_paragraph(s, other, "Zorvath is also named in another novel.")
    assert lexical_positions(Session, novel_id, "zorvath") == [2]
    with Session() as s, s.begin():
        store.edit_paragraph(s, second.id, "Ilse climbed the stairs with a candle.", expected_version=1)
    assert lexical_positions(Session, novel_id, "zorvath") == []
    assert lexical_positions(Session, novel_id, "candle") == [2]
    with Session() as s, s.begin():
        revisions.undo(s, novel_id)
    assert lexical_positions(Session, novel_id, "zorvath") == [2]
    assert lexical_positions(Session, novel_id, "candle") == []
    with Session() as s, s.begin():
        revisions.redo(s, novel_id)
    assert lexical_positions(Session, novel_id, "candle") == [2]
    # Deleting moves the later paragraph up; undo brings the deleted one back where it was.
    with Session() as s, s.begin():
        store.delete_paragraph(s, store.paragraph_at(s, novel_id, 1).id, expected_version=1)
    assert lexical_positions(Session, novel_id, "lamp cove") == []
    assert lexical_positions(Session, novel_id, "bread") == [2]
    with Session() as s, s.begin():
        revisions.undo(s, novel_id)
    assert lexical_positions(Session, novel_id, "lamp cove") == [1]
    assert lexical_positions(Session, novel_id, "bread") == [3]
    # Stemming: "climbing" finds "climbed".
    assert lexical_positions(Session, novel_id, "climbing") == [2]
    # A deleted novel leaves nothing in the index for the other to find.
    with Session() as s, s.begin():
        store.delete_novel(s, novel_id)
    assert lexical_positions(Session, other, "zorvath") == [1]
    with Session() as s:
        if s.get_bind().dialect.name == "sqlite":
            from sqlalchemy import text

            assert s.scalar(text("SELECT count(*) FROM paragraphs_fts WHERE paragraphs_fts MATCH 'lamp'")) == 0
            assert s.scalar(text("SELECT count(*) FROM paragraphs_fts WHERE paragraphs_fts MATCH 'zorvath'")) == 1


def test_rare_terms_are_those_in_few_paragraphs(Session):
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Rare").id
        for i in range(8):
            store.add_paragraph(s, novel_id, f"The tower room was cold on day {i}.")
        store.add_paragraph(s, novel_id, "Farrowmere left a glove in the tower room.")
    with Session() as s:
        assert retrieval.rare_terms(s, novel_id, ["tower", "farrowmere", "glove", "absent"]) == \
            ["farrowmere", "glove"]


STORM = [
    "The storm broke over the harbour at dusk and the boats strained at their ropes.",
    "Waves from the storm climbed the harbour wall and soaked the fish sheds.",
    "All night the storm howled through the harbour and nobody slept.",
    "The harbour master said the storm was the worst in twenty years.",
    "After the storm the harbour was full of broken crates and seaweed.",
    "Children watched the storm from the harbour inn, counting the lightning.",
]


def test_name_terms_are_capitalised_words_not_starting_a_sentence():
    assert retrieval.name_terms("Where did Aldous Fenwick go? Mara knew. She told Tomas.") == {"aldous", "fenwick",
                                                                                               "tomas"}
    assert retrieval.name_terms("Where did the keeper hide the key?") == set()


def test_fused_lexical_side_looks_for_names_unless_the_query_is_all_lower_case(Session):
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Names").id
        store.add_paragraph(s, novel_id, "The tower stood alone on the point.")
        store.add_paragraph(s, novel_id, "Fenwick mended the nets by the boathouse.")
        for _ in range(6):
            store.add_paragraph(s, novel_id, "The sea was grey and the gulls were loud.")

    def found(query: str, **kwargs) -> set[int]:
        with Session() as s:
            hits = retrieval.lexical_top_k(s, novel_id, query, 10, rare_only=True, **kwargs)
            return {store.get_paragraph(s, pid).position for pid, _ in hits}

    assert found("Did Fenwick ever climb the tower?") == {1, 2}
    assert found("Did Fenwick ever climb the tower?", names_only=True) == {2}
    assert found("Where does the tower stand?", names_only=True) == set()
    assert found("fenwick tower", names_only=True) == {1, 2}


def test_fused_finds_a_name_only_the_lexical_index_finds(Session, embedder):
    # A character called Brick: to MiniLM the name is a building material, and the question's other words match
    # every storm paragraph, so the vectors rank Brick's paragraph last; the name is rare in the novel, so the
    # lexical side finds it, and fusion puts it first.
    target = "At supper Brick spoke only of his debts and left before the pudding."
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Harbour").id
        for body in STORM + [target]:
            store.add_paragraph(s, novel_id, body, embedding=embedder.passage(body))
    question = "What did Brick say about the storm in the harbour?"
    vector = embedder.vector(question)
    with Session() as s:
        by_vectors = [h.paragraph.position for h in retrieval.search(s, novel_id, vector, 7, method="sentence")]
        fused = retrieval.search(s, novel_id, vector, 3, text=question)
        assert retrieval.rare_terms(s, novel_id, retrieval.query_terms(question)) == ["brick"]
    assert by_vectors.index(7) >= 3, "the case is meant to be one the vectors miss"
    assert fused[0].paragraph.position == 7
    assert fused[0].lexical_rank == 1 and "lexical rank 1" in fused[0].why()
    assert [h.lexical_rank for h in fused[1:]] == [None, None]


PUT_AWAY = [
    "Mara put the bread away and went out to the boat.",
    "After supper Mara put away the nets and the tar brushes.",
    "Mara put the chairs away before the inspector came.",
    "Mara put away the winter coats in the cedar chest.",
    "Mara put the logbook away and watched the tide.",
    "Mara put away the fishing lines and lit the stove.",
]


def test_fused_finds_a_paraphrase_only_the_vectors_find(Session, embedder):
    fact = ("The gulls were loud over the boathouse. Mara buried her savings beneath the floorboards of the "
            "boathouse. Then she went to bed.")
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Savings").id
        for body in PUT_AWAY + [fact]:
            store.add_paragraph(s, novel_id, body, embedding=embedder.passage(body))
    question = "Where did Mara hide her cash?"
    vector = embedder.vector(question)
    with Session() as s:
        lexical = [h.paragraph.position for h in retrieval.search(s, novel_id, None, 10, text=question,
                                                                   method="lexical")]
        fused = retrieval.search(s, novel_id, vector, 3, text=question)
    assert 7 not in lexical[:1] and lexical, "the case is meant to be one the lexical index misses"
    # "Mara" is in every paragraph: not rare, so the lexical side adds nothing and the vectors decide.
    assert fused[0].paragraph.position == 7
    assert fused[0].lexical_rank is None and "savings" in fused[0].sentence
    assert fused[0].why().startswith("vector rank 1 (sentence match")


def test_search_refuses_an_unknown_method(Session):
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "x").id
    with Session() as s:
        with pytest.raises(ValueError, match="Unknown retrieval method 'nearest'"):
            retrieval.search(s, novel_id, None, 3, method="nearest")
