"""The continuity measures and repairs (app/engine/continuity.py) on hand-made text: each one passing good text and
failing the failure it is meant to catch."""

from __future__ import annotations

import pytest

from app.engine.continuity import (
    MODE_VOICES,
    carries_over,
    carry_over_share,
    copied_paragraph,
    entities,
    is_restart,
    leaks,
    length_score,
    longest_shared_run,
    memory_moved,
    memory_problem,
    person_of,
    strip_leaks,
    tense_of,
    trim_to_length,
    voice_problem,
)

P1 = ("Mara kept the lighthouse on Skerry alone. Every morning she walked the shore below the cliff and counted the "
      "gulls. One grey morning a green bottle lay in the weed, and inside it was a note.")
P2 = ("Mara climbed the spiral stair with the note in her fist. The lamp room smelled of paraffin and salt. She read "
      "the words again: do not light the lamp tonight.")
STRANGER = "In 2017, a woman named Julia opened a bakery in Paris. Her bread was famous across France."


def test_entities_are_names_not_sentence_openers():
    assert entities(P1) == {"mara", "skerry"}
    assert entities("She walked. Then the boat came. It was late.") == set()
    # Contractions of pronouns, common words that open sentences, and a word the text also writes in lower case.
    assert entities("They'd gone. Slowly the tide turned. Centuries passed. Rain fell, and the rain did not stop.") \
        == set()
    # A name that only ever opens sentences is still a name; one capitalized mid-sentence makes its openers count.
    assert entities("Mara's lamp burned. Mara waited.") == {"mara"}
    assert entities("Slowly came the dawn. Slowly was the name the keeper gave his dog, and Mara laughed at Slowly.") \
        == {"slowly", "mara"}


def test_carry_over_needs_a_shared_name():
    assert carries_over(P2, P1)
    assert not carries_over(STRANGER, P1)
    assert carries_over(STRANGER, P1, memory="Julia waits in Paris for Mara.")
    assert carry_over_share([P1, P2, STRANGER]) == 0.5
    assert carry_over_share([P1]) is None


@pytest.mark.parametrize("text", ["Once upon a time, in a village by the sea, there lived a girl.",
                                  "A long time ago, a king ruled the north.", STRANGER,
                                  "Chapter One. The storm came.", "There once was a keeper named Mara.",
                                  "In 1970s Los Angeles, a small coastal town lay shrouded in fog."])
def test_openings_of_a_new_story_are_restarts(text):
    assert is_restart(text)


def test_a_continuation_is_no_restart():
    assert not is_restart(P2)
    assert not is_restart("In the morning Mara rowed to the mainland.")


def test_leaked_labels_markers_instructions_and_meta_text_are_found():
    assert leaks("(paragraph 4) Mara climbed the stair.") == ["label"]
    assert leaks("Plan: Mara climbs the stair. She climbs.") == ["label"]
    assert leaks("<|im_start|>assistant Mara climbed.") == ["marker"]
    assert leaks("This time take a different direction, focusing entirely on Tomas.") == ["instruction"]
    assert leaks("In this paragraph, Mara finds the key.") == ["meta"]
    assert leaks("The Ice Palace: A Winter's Tale, A Royal Tale, The Snow Queen, Frost") == ["title_list"]
    assert leaks(P1) == [] and leaks(P2) == []
    # A character may speak words that would be a leak in the narration; "a plan:" inside a sentence is story.
    assert leaks('"Write the letter tonight," Tomas said. She had a plan: wait for the tide.') == []


def test_strip_leaks_removes_labels_and_drops_instruction_sentences():
    repaired = strip_leaks("(paragraph 4) Mara walked to the shore. This time take a different direction, focusing "
                           "entirely on Tomas. The next paragraph shows the boat. She wept.")
    assert repaired.text == "Mara walked to the shore. She wept."
    assert "removed prompt labels" in repaired.repairs
    assert any("dropped 2 sentence" in r for r in repaired.repairs)
    assert strip_leaks(P1).text == P1 and strip_leaks(P1).repairs == ()


def test_a_memory_that_copies_paragraph_one_is_caught():
    copy = "Mara kept the lighthouse on Skerry alone. Every morning she walked the shore below the cliff."
    assert longest_shared_run(copy, P1) == len(copy.split())
    assert copied_paragraph(copy, [P1, P2]) == 0
    summary = "Mara, alone on Skerry, found a note in a bottle in her own hand and now fears the lamp."
    assert copied_paragraph(summary, [P1, P2]) is None
    assert memory_problem("", copy, P1, [P1]) == "the memory copies paragraph 1 instead of summarizing"


def test_memory_movement_needs_a_change_that_names_the_new_paragraph():
    old = "Mara keeps the Skerry lighthouse alone."
    assert not memory_moved(old, old, P2)
    assert not memory_moved(old, "A storm is coming from the west over the sea.", "Tomas rowed out to the wreck.")
    assert memory_moved(old, old + " Tomas rowed out to the wreck.", "Tomas rowed out to the wreck at dawn.")
    assert memory_problem(old, old, P2, [P1, P2]) == "the memory did not change"
    assert memory_problem(old, "The weather is bad today.", STRANGER, [P1, STRANGER]) == \
        "the memory names nothing of the new paragraph"
    assert memory_problem(old, "Mara keeps the lighthouse; Julia opened a bakery far away.", STRANGER,
                          [P1, STRANGER]) == ""


def test_voice_catches_a_first_person_paragraph_when_third_is_asked():
    first = "I climbed the stair with the note in my fist. I read it again and my hands shook."
    assert person_of(first) == "first"
    assert voice_problem(first, MODE_VOICES["write"]) == "in the first person, not the third"
    assert voice_problem(P2, MODE_VOICES["write"]) == ""
    # Dialogue in the first person does not make the narration first person.
    assert voice_problem('"I will not light it," she said. She walked down and locked the door.',
                         MODE_VOICES["write"]) == ""


def test_voice_catches_the_wrong_tense_and_the_second_person():
    present = "Mara climbs the stair. She is cold and the lamp is dark. She looks at the sea."
    assert tense_of(present) == "present"
    assert voice_problem(present, MODE_VOICES["write"]) == "in the present tense, not the past"
    second = "You climb the stair. Your hands are cold and you look out at the sea."
    assert voice_problem(second, MODE_VOICES["interactive"]) == ""
    assert "in the second person, not the third" in voice_problem(second, MODE_VOICES["write"])


def test_length_score_is_longwriters():
    assert length_score(110, 110) == 100
    assert length_score(220, 110) == pytest.approx(100 * (1 - 1 / 3))
    assert length_score(55, 110) == pytest.approx(50)
    assert length_score(500, 110) == 0 and length_score(0, 110) == 0
    with pytest.raises(ValueError):
        length_score(10, 0)


def test_trim_to_length_cuts_at_a_sentence_end():
    text = " ".join([P1, P2, P1])
    limit = len(P1.split()) + len(P2.split()) + 5
    trimmed = trim_to_length(text, limit)
    assert trimmed.text == " ".join([P1, P2])
    assert len(trimmed.text.split()) <= limit and trimmed.text.endswith(".")
    assert trimmed.repairs and "sentence end" in trimmed.repairs[0]
    assert trim_to_length(P1, 60).repairs == ()
