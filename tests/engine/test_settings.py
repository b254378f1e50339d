"""NovelSettings: one typed object with defaults and ranges; a bad value is refused with one line naming the field,
or (for what a database already holds) replaced by its default with a notice, and the engine still writes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.engine import Engine
from app.engine.settings import FORM_FIELDS, NovelSettings, SettingsError, check_stored
from memory import store
from tests.engine.engine_fakes import ScriptedGenerator, run

BAD_STORED = {
    "hot": ({"sampling": {"temperature": "hot"}}, "temperature must be a number between 0 and 2, got 'hot'"),
    "negative": ({"sampling": {"temperature": -3}}, "temperature must be a number between 0 and 2, got -3"),
    "huge_context": ({"context_tokens": 10**12}, "context_tokens (context budget) must be a whole number between "
                                                 "256 and 1048576, got 1000000000000"),
    "fraction": ({"retrieval_top_k": 2.5}, "retrieval_top_k (retrieval top-k) must be a whole number"),
    "bool": ({"penalties": {"range": True}}, "penalty_range must be a whole number between 0 and 10000000, got True"),
    "nan": ({"penalties": {"dry_base": float("nan")}}, "dry_base must be a number between 1 and 10, got nan"),
    "choice": ({"snapshot_dtype": "fp8"}, "snapshot_dtype (snapshot precision) must be one of fp32, bf16"),
    "group": ({"sampling": [0.3]}, "sampling must be an object, got [0.3]"),
    "breakers": ({"penalties": {"dry_sequence_breakers": ["", 3]}}, "dry_sequence_breakers must be a list"),
    "budget": ({"max_new_tokens": 3000}, "must be larger than the paragraph length"),
}


@pytest.mark.parametrize("case", list(BAD_STORED))
def test_from_dict_names_the_bad_field_in_one_line(case):
    stored, message = BAD_STORED[case]
    with pytest.raises(SettingsError) as info:
        NovelSettings.from_dict(stored)
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError):
        check_stored(stored)


@pytest.mark.parametrize("case", list(BAD_STORED))
def test_repaired_keeps_the_good_fields_and_defaults_the_bad(case):
    stored, message = BAD_STORED[case]
    stored = {**stored, "memory_words": 45, "outline": "1. Ann rows."}
    settings, problems = NovelSettings.repaired(stored)
    assert len(problems) == 1 and message in problems[0]
    assert settings.memory_words == 45 and settings.outline == "1. Ann rows."
    assert NovelSettings.from_dict(settings.to_dict()) == settings  # what the engine uses is itself valid


def test_defaults_round_trip_and_partial_dicts_fill_in():
    defaults = NovelSettings()
    assert NovelSettings.from_dict(defaults.to_dict()) == defaults
    assert NovelSettings.from_dict(None) == defaults
    older = NovelSettings.from_dict({"sampling": {"temperature": 0.3}, "max_new_tokens": 99, "unknown": 1})
    assert (older.temperature, older.top_p, older.max_new_tokens) == (0.3, defaults.top_p, 99)
    assert older.sampling_params().temperature == 0.3 and older.penalty_params().range == defaults.penalty_range


def test_the_form_is_generated_from_the_fields():
    defaults = NovelSettings()
    form = defaults.to_form()
    assert tuple(form) == FORM_FIELDS and "outline" not in FORM_FIELDS and "temperature" in FORM_FIELDS
    changed = NovelSettings.from_form({**form, "temperature": 1.2, "penalty_range": 64.0},
                                      replace(defaults, outline="kept"))
    assert (changed.temperature, changed.penalty_range, changed.outline) == (1.2, 64, "kept")
    with pytest.raises(SettingsError, match="JSON list"):
        NovelSettings.from_form({**form, "dry_sequence_breakers": "not json"})


def test_the_engine_writes_a_novel_with_bad_stored_settings_and_says_so(session_factory, embedder, novel_id):
    with session_factory() as session, session.begin():
        store.update_novel_settings(session, novel_id, {"sampling": {"temperature": "hot", "seed": 3},
                                                        "context_tokens": 10**12, "memory_words": 40})
    generator = ScriptedGenerator()
    engine = Engine(session_factory, generator, embedder)
    events, outcome = run(engine.start(novel_id))
    notices = [event.text for event in events if event.kind == "notice"]
    assert any("temperature must be a number between 0 and 2, got 'hot' (the default 0.8 is used)" in text
               and "context_tokens (context budget)" in text for text in notices)
    assert outcome.paragraph and outcome.notices == notices
    events, outcome = run(engine.step(novel_id, "Mara climbs the tower."))
    assert any("'hot'" in event.text for event in events if event.kind == "notice")
    with session_factory() as session:
        assert len(store.paragraphs(session, novel_id)) == 2
    sent = generator.calls_for("paragraph")[-1]
    assert sent.penalties.repetition == NovelSettings().repetition
