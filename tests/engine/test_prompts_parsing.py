"""Prompt templates (one file per stage, named slots, literal insertion) and the parsers of model output."""

from __future__ import annotations

import pytest

from app.engine.parsing import (
    candidate_plans,
    copies_text,
    parse_choice,
    parse_memory,
    parse_paragraph,
    parse_plans,
    parse_title_outline,
)
from app.engine.prompts import PROMPTS_DIR, STAGES, PromptLibrary, TemplateError, parse_template
from app.engine.text import cut_loop, distinct_n, is_looping, repeated_sentence_share, trim_to_sentence


def test_every_stage_has_its_own_template_file():
    library = PromptLibrary()
    for stage in STAGES:
        assert (PROMPTS_DIR / f"{stage}.txt").is_file()
        assert library.slots(stage), f"{stage} has no slots"
    assert {"memory", "plan", "retrieved", "last_paragraph", "bible"} <= library.slots("paragraph")


def test_slot_text_is_inserted_literally_and_empty_blocks_vanish():
    library = PromptLibrary()
    rendered = library.render("paragraph", premise="A {{plan}} premise", outline="", style="", bible="",
                              memory="She has the key.", retrieved="", last_paragraph="It rained.",
                              plan="Open the door.", voice="Third person.", words=100, synopsis="",
                              chapters="", chapter_so_far="")
    user = rendered.messages[-1]["content"]
    assert "A {{plan}} premise" in user
    assert "Story bible" not in user and "Earlier passages" not in user and "Outline" not in user
    assert "Summary so far: She has the key." in user
    assert rendered.section_text("plan") == "Open the door."
    assert "Summary so far" in rendered.section_text("memory")


def test_render_refuses_missing_and_unknown_slots():
    library = PromptLibrary()
    with pytest.raises(TemplateError, match="needs slot"):
        library.render("memory", memory="x", paragraph="y")
    with pytest.raises(TemplateError, match="no slot"):
        library.render("memory", premise="", memory="x", paragraph="y", max_words=10, extra="z")


def test_template_syntax_errors_name_the_file():
    with pytest.raises(TemplateError, match="never closed"):
        parse_template("x", "[user]\n{{#memory}}open")
    with pytest.raises(TemplateError, match="no \\[user\\]"):
        parse_template("x", "[system]\nhello")


def test_answer_prefix_starts_the_plans_list():
    rendered = PromptLibrary().render("plans", premise="", memory="m", paragraph="p")
    assert rendered.answer_prefix == "1."


@pytest.mark.parametrize("raw", [
    "1. Mara climbs the tower.\n2. She burns the note.\n3. A ship appears on the horizon.",
    "1. Option A: Mara climbs the tower.\nOption B - She burns the note.\nOption C - A ship appears on the horizon.",
    "1. Opción 1: Mara sube a la torre.\nOpción 2: Mara quema la nota.\nOpción 3: Un barco aparece en el horizonte.",
    "1. Idée n°1 : Mara monte à la tour.\nIdée n°2 : Mara brûle la note.\nIdée n°3 : Un navire apparaît au loin.",
    "1. **Mara climbs the tower.**\n* She burns the note.\n* A ship appears on the horizon.",
    "1. Mara climbs the tower. 2. She burns the note. 3. A ship appears on the horizon.",
    "Sure! Here are three ideas:\nMara climbs the tower.\nShe burns the note.\nA ship appears on the horizon.",
    "1.\n\nPlan 1: Mara climbs the tower.\n\nPlan 2: She burns the note.\n\nPlan 3: A ship appears on the horizon.",
])
def test_plans_are_read_from_many_list_styles(raw):
    parsed = parse_plans(raw)
    assert parsed.ok, parsed.problem
    assert len(parsed.value) == 3
    assert all(len(plan.split()) >= 3 and "**" not in plan for plan in parsed.value)
    assert not any(plan.lower().startswith(("option", "opción", "idée", "plan")) for plan in parsed.value)


def test_duplicate_and_empty_plans_are_not_counted():
    assert not parse_plans("1. The storm breaks the lamp.\n2. The storm breaks the lamp.\n3.").ok
    assert candidate_plans("1. The storm breaks the lamp.\n2. The storm breaks the lamp!") == [
        "The storm breaks the lamp."]
    assert candidate_plans("") == []
    assert candidate_plans("1. Mara runs away.\n2. These are three possible outcomes of the scene, each with a "
                           "twist.") == ["Mara runs away."]


def test_a_plan_copied_from_the_paragraph_is_recognised():
    paragraph = "Mara climbed the stairs in the dark. The lamp was cold and the glass was cracked."
    assert copies_text("The lamp was cold and the glass was cracked.", paragraph)
    assert not copies_text("Mara repairs the cracked glass before the storm.", paragraph)


def test_paragraph_parser_strips_preamble_loops_and_unfinished_sentences():
    parsed = parse_paragraph("Sure! Here is the next paragraph:\n\nMara climbed the stairs in the dark. The lamp "
                             "was cold. Mara climbed the stairs in the dark. Mara climbed the stairs in the dark. "
                             "She was about to")
    assert parsed.value == "Mara climbed the stairs in the dark. The lamp was cold."
    assert "repeated" in parsed.problem
    assert not parse_paragraph("").ok
    assert not parse_paragraph("<|im_end|>").ok
    assert not parse_paragraph("Here is the paragraph:").ok


def test_memory_parser_bounds_length_and_drops_labels():
    long_summary = "Updated summary: " + " ".join(f"Mara did thing number {i}." for i in range(100))
    parsed = parse_memory(long_summary, max_words=40)
    assert parsed.ok and len(parsed.value.split()) <= 40
    assert not parsed.value.startswith("Updated")
    assert not parse_memory("Summary:", 40).ok


@pytest.mark.parametrize("raw,title,outline", [
    ("Title: The Keeper\nOutline: Mara finds a bottle. She learns the truth about it.", "The Keeper",
     "Mara finds a bottle. She learns the truth about it."),
    ("Titre : Le Gardien\nRésumé : Mara trouve une bouteille. Elle apprend la vérité sur elle-même.", "Le Gardien",
     "Mara trouve une bouteille. Elle apprend la vérité sur elle-même."),
    ("Title: **The Keeper** (2016)\nSynopsis: Mara finds a bottle on the shore. It changes her life.", "The Keeper",
     "Mara finds a bottle on the shore. It changes her life."),
    ("Title: The Keeper Plot: Mara finds a bottle on the shore and reads it.", "The Keeper",
     "Mara finds a bottle on the shore and reads it."),
])
def test_title_and_outline_with_renamed_or_translated_markers(raw, title, outline):
    title_parsed, outline_parsed = parse_title_outline(raw)
    assert title_parsed.value == title
    assert outline_parsed.value == outline


def test_title_without_outline_is_reported():
    title_parsed, outline_parsed = parse_title_outline("Title: The Lost Sailor\n\nI. Introduction\nII. Years")
    assert title_parsed.value == "The Lost Sailor"
    assert not outline_parsed.ok


@pytest.mark.parametrize("raw,index", [(" 2", 1), (" number two.", 1), ("The third one", 2), ("3) because", 2),
                                       (" 7", None), ("none", None)])
def test_choice(raw, index):
    assert parse_choice(raw, 3).value == index


def test_repetition_measures():
    texts = ["The sea was calm. The gulls cried.", "The sea was calm. A boat came."]
    assert repeated_sentence_share(texts) == pytest.approx(1 / 4)
    assert distinct_n(["a b a b a b"], 2) == pytest.approx(2 / 5)
    assert is_looping("I went home. " * 4)
    assert not is_looping("I went home. Then I slept. The morning came with rain.")
    assert cut_loop("One two three. Four five six. One two three.") == "One two three. Four five six."
    assert trim_to_sentence("It rained. She was") == "It rained."


def test_sentences_copied_from_earlier_paragraphs_are_dropped():
    from app.engine.parsing import drop_repeated_sentences

    earlier = ["Mara climbed the stairs in the dark. The lamp was cold."]
    fresh = drop_repeated_sentences("The lamp was cold. She struck a match and the wick caught at once, blue then "
                                    "gold.", earlier)
    assert fresh.value == "She struck a match and the wick caught at once, blue then gold."
    assert "dropped 1 sentence" in fresh.problem
    assert not drop_repeated_sentences("Mara climbed the stairs in the dark. The lamp was cold.", earlier).ok
