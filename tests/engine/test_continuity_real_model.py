"""The memory always moves, with the real default model (SmolLM2-135M-Instruct) through the app's default backend on
a CPU (llama.cpp), the real MiniLM embedder and a real SQLite file: three steps (the opening and two more, with the
novel's default paragraph prompt), and after each the saved memory changed and names something of the new
paragraph, whether the model wrote it or the extractive fallback did (its origin says which). Token limits are kept
small so it stays within minutes on two CPU cores. And the memory stage's copy guard (DRY over the new text) keeps
the greedy answer of a memory update the model otherwise answers by pasting the paragraph from being a copy."""

from __future__ import annotations

import pytest

from app.engine import Engine
from app.engine.continuity import copied_paragraph, leaks, longest_shared_run, memory_moved
from app.engine.prompts import PromptLibrary
from app.engine.stages import ModelStages
from memory import store
from models.sampling import SamplingParams
from models.service import ModelSpec, load_generator
from tests.engine.engine_fakes import run
from tests.engine.test_engine_real_model import SMALL

# Through transformers the three steps took over 17 minutes on the loaded 2-core machine; llama.cpp is several
# times faster (bench/results/llamacpp.json), and the hour stays for a machine under heavy load.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def default_llamacpp_generator(tmp_path_factory):
    """The default GGUF as the app runs it on a CPU: llama.cpp, with its default thread count (half the cores)."""
    from app.offline import DEFAULT_LM_NAME, default_lm_path

    source = ModelSpec("gguf", str(default_lm_path()), DEFAULT_LM_NAME)
    return load_generator(source, device="cpu", dtype="float32", cache_dir=tmp_path_factory.mktemp("lm-cache"),
                          gguf_backend="llama.cpp")


def test_three_real_steps_move_the_memory_every_time(session_factory, embedder, default_llamacpp_generator,
                                                     novel_id):
    with session_factory() as session, session.begin():
        store.update_novel_settings(session, novel_id, SMALL)
    engine = Engine(session_factory, default_llamacpp_generator, embedder)
    notices = []
    _, outcome = run(engine.start(novel_id))
    notices.extend(outcome.notices)
    for _ in range(2):
        _, outcome = run(engine.step(novel_id, plan_index=0))
        notices.extend(outcome.notices)
    with session_factory() as session:
        paragraphs = [p.text for p in store.paragraphs(session, novel_id)]
        history = store.memory_history(session, novel_id)
    assert len(paragraphs) == 3
    memories = [m.text for m in history]
    assert len(memories) == 1 + 3  # the empty first one, then one per step
    for index, paragraph in enumerate(paragraphs):
        before, after = memories[index], memories[index + 1]
        assert memory_moved(before, after, paragraph), (index, before, after, paragraph)
        assert len(after.split()) <= SMALL["memory_words"]
        if history[index + 1].origin == "generated":
            # A rewrite the engine accepted copies no paragraph; the extractive fallback says it is one.
            assert copied_paragraph(after, paragraphs[:index + 1]) is None
        else:
            assert history[index + 1].origin == "extractive"
            assert any("extractive" in n for n in notices)
    # What the guards strip never reaches the manuscript.
    assert not any({"label", "marker"} & set(leaks(p)) for p in paragraphs)


# A memory update the default model answers, greedily, by pasting most of the new paragraph (from a
# bench/continuity run: 105 of its 119 words in one run, without the guard).
OLD_MEMORY = ('In the heart of the remote island, a lighthouse keeper found a message addressed to her, penned in '
              'her own handwriting, penned on a canvas by her own ink, penned on a faded map by her own '
              'handwriting. The words spoke of a life gone dark and untimely, a fate many were doomed to endure. '
              'Her eyes felt the burden of loneliness, a heavy sorrow that weighed down her soul. In Skerry, a '
              'beacon, a single sentence: "Aunt Emily\'s Hope"')
NEW_PARAGRAPH = ('Once upon a time in the remote island of Skerry, a lighthouse keeper lay at the mercy of the '
                 'endless sea, her thoughts still echoing the echoes of the past, when love meant so much more than '
                 'anything else, and death said nothing, except to mourn, and that her life became a journey of light '
                 'and her dreams to share it with those who might care to listen. The words "Aunt Emily\'s Hope" '
                 'flowed like the tides, a choice she had taken, a gift given to a loner who was forced to live alone '
                 'in solitude, where others could help and look up to, a lonely dream that haunted him. His eyes felt '
                 'the pain, his mind clenched at the edge, he stood there, lost forever, before she finally smiled, '
                 "as if to say, 'You are too kind' and smiled back, her smile leaving the keeper’s lips.")


def test_the_copy_guard_keeps_a_memory_update_from_pasting_the_paragraph(default_llamacpp_generator):
    generator = default_llamacpp_generator
    rendered = PromptLibrary().render("memory", premise="A lighthouse keeper on a remote island finds a message in a "
                                      "bottle addressed to her, written in her own handwriting.",
                                      memory=OLD_MEMORY, paragraph=NEW_PARAGRAPH, max_words=80)
    prompt = generator.render_chat(rendered.messages) + rendered.answer_prefix
    greedy = SamplingParams(temperature=0.0)
    guard = ModelStages(generator=generator, prompts=PromptLibrary()).memory_penalties(NEW_PARAGRAPH)
    assert guard["penalty_history"] == NEW_PARAGRAPH
    pasted = "".join(generator.stream(prompt, sampling=greedy, max_new_tokens=144))
    guarded = "".join(generator.stream(prompt, sampling=greedy, max_new_tokens=144, **guard))
    # Without the guard this is a case the engine refuses ("the memory copies paragraph 1"), so the check can fail.
    assert copied_paragraph(pasted, [NEW_PARAGRAPH]) == 0, pasted
    assert copied_paragraph(guarded, [NEW_PARAGRAPH]) is None, guarded
    assert longest_shared_run(guarded, NEW_PARAGRAPH) < longest_shared_run(pasted, NEW_PARAGRAPH) / 2
    assert len(guarded.split()) >= 20  # still a summary, not an answer cut short
