"""A novel's settings as one typed object, validated in one place: `NovelSettings`.

Every entry point goes through it: the Settings tab (`from_form`), an import (`check_stored`, handed to
`memory.exchange` as its settings check), `python -m app write` and the engine (`repaired`). The fields, their
defaults and their ranges are declared once below; the Settings tab's form and the engine read them from here.

Stored in `novel.settings` as `to_dict()` gives it: `{"model", "device", "dtype", "sampling": {...},
"penalties": {...}, "retrieval_top_k", ...}` (`sampling` and `penalties` hold models.sampling's field names).
A stored dict may be partial (older versions saved fewer keys): what it lacks takes the default. One that holds a
bad value is refused by `from_dict` with one line naming the field, e.g. "temperature must be a number between 0
and 2, got 'hot'"; `repaired` instead keeps the good fields, puts the default in each bad one and says which, so a
novel written by an older version (or imported before this check) still opens and writes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from app.config import DEVICES, DTYPES
from models.backend import STATE_DTYPES
from models.sampling import DEFAULT_DRY_BREAKERS, PenaltyParams, SamplingParams

MODES = ("write", "interactive")
# How the paragraph is asked for: "instruction" (prompts/opening.txt, paragraph.txt: a chat message asking for the
# next paragraph) or "document" (prompts/continue_*.txt: the manuscript itself, continued; see PARAGRAPH_PROMPT).
PARAGRAPH_PROMPTS = ("instruction", "document")
# The default for the default model, by bench/continuity.py (bench/results/continuity.json): SmolLM2-135M-Instruct
# through llama.cpp, default penalties, 3 premises x 8 steps x 3 seeds (1234, 2234, 3334) per strategy. Instruction
# vs document, both with the guards: 72 vs 68 paragraphs (one document run stopped at step 5: no usable paragraph
# in 3 tries), carry-over 23/63 vs 17/59 (0.37 vs 0.29; instruction ahead on every seed: 9/21, 7/21, 7/21 vs 6/21,
# 5/17, 6/21), restarts 3 vs 0, leaking paragraphs 0 vs 0, memory moved 72/72 vs 68/68, memories copying a
# paragraph 16/72 vs 4/68 (extractive fallbacks 23 vs 18), paragraphs in the asked voice 70/72 vs 61/68, length
# score 87 vs 72 (short paragraphs continued 10 vs 13, 6 vs 18 left short). Instruction keeps the story's names
# going, its voice and its length better and finished every run; document restarts and copies less. Carry-over is
# the point, so instruction stays the default and document the per-novel choice (also for models without a chat
# template). Both prompts keep the plan and their own closing lines under any budget and drop the same sections in
# app/engine/context.py TRUNCATION_ORDER (tests/engine/test_engine_chapters.py, test_engine_scripted.py).
# Before the guards (5b4915b, instruction, 8 paragraphs): 2 leaked meta-text, memory moved 0.63, copies 0.38,
# length 84.
PARAGRAPH_PROMPT = "instruction"
MAX_MODEL_CHARS = 4096
MAX_OUTLINE_CHARS = 100_000


class SettingsError(ValueError):
    """A setting that cannot be used; one line naming the field, what it must be and what it was."""


@dataclass(frozen=True)
class Spec:
    """How one field is checked and where it is stored.

    kind: "number", "whole", "choice", "text", "breakers" (a list of non-empty texts) or "seed" (a whole number
    or null). `group` is the nested dict it is stored in ("sampling", "penalties") and `key` its name there.
    `form`: shown in the Settings tab. `label`: the name the Settings tab gives it, when it differs.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the low end itself is not allowed
    high_open: bool = False
    choices: tuple[str, ...] = ()
    group: str | None = None
    key: str | None = None
    form: bool = True
    label: str | None = None


def _setting(default, kind: str, **spec):
    return field(default=default, metadata={"spec": Spec(kind, **spec)})


# The penalties a novel's paragraphs are written with unless its settings say otherwise (models.sampling's own
# defaults are all off). bench/quality.py at 30 steps x 5 premises with the default model
# (bench/results/quality.json), off -> on: saved paragraphs caught in a loop 18 -> 0, distinct-4 0.34 -> 0.97.
@dataclass(frozen=True)
class NovelSettings:
    model: str = _setting("default", "text", label="model")
    device: str = _setting("auto", "choice", choices=DEVICES)
    dtype: str = _setting("auto", "choice", choices=DTYPES)
    temperature: float = _setting(0.8, "number", low=0, high=2, group="sampling")
    top_k: int = _setting(0, "whole", low=0, high=100_000, group="sampling", form=False)
    top_p: float = _setting(0.95, "number", low=0, high=1, low_open=True, group="sampling")
    min_p: float = _setting(0.05, "number", low=0, high=1, high_open=True, group="sampling")
    seed: int | None = _setting(None, "seed", group="sampling", form=False)
    repetition: float = _setting(1.1, "number", low=0, high=3, low_open=True, group="penalties")
    presence: float = _setting(0.0, "number", low=-2, high=2, group="penalties")
    frequency: float = _setting(0.0, "number", low=-2, high=2, group="penalties")
    penalty_range: int = _setting(512, "whole", low=0, high=10_000_000, group="penalties", key="range",
                                  label="penalty range")
    dry_multiplier: float = _setting(0.8, "number", low=0, high=10, group="penalties")
    dry_base: float = _setting(1.75, "number", low=1, high=10, group="penalties")
    dry_allowed_length: int = _setting(2, "whole", low=1, high=1000, group="penalties")
    dry_sequence_breakers: tuple[str, ...] = _setting(tuple(DEFAULT_DRY_BREAKERS), "breakers", group="penalties")
    retrieval_top_k: int = _setting(3, "whole", low=0, high=20, label="retrieval top-k")
    memory_words: int = _setting(80, "whole", low=20, high=2000, label="memory length")
    max_new_tokens: int = _setting(250, "whole", low=1, high=4096, label="paragraph length")
    paragraph_words: int = _setting(110, "whole", low=1, high=4000, form=False)
    context_tokens: int = _setting(2048, "whole", low=256, high=1_048_576, label="context budget")
    # Next step and Retry write this many versions of the paragraph (each with its own memory and plans); the first
    # goes in the manuscript, the others are kept beside it (memory/alternatives.py).
    candidates: int = _setting(1, "whole", low=1, high=4, label="versions per step")
    max_attempts: int = _setting(3, "whole", low=1, high=20, form=False)
    mode: str = _setting("write", "choice", choices=MODES, form=False)
    paragraph_prompt: str = _setting(PARAGRAPH_PROMPT, "choice", choices=PARAGRAPH_PROMPTS, form=False,
                                     label="paragraph prompt")
    snapshot_budget_mb: int = _setting(2000, "whole", low=0, high=1_000_000, label="snapshot disk budget")
    snapshot_dtype: str = _setting("fp32", "choice", choices=STATE_DTYPES, label="snapshot precision")
    plan_tokens: int = _setting(120, "whole", low=1, high=4096, form=False)
    title_tokens: int = _setting(80, "whole", low=1, high=4096, form=False)
    outline: str = _setting("", "text", form=False)

    # ------------------------------------------------------------------------------------------- reading

    @classmethod
    def from_dict(cls, stored: Any) -> "NovelSettings":
        """The settings a stored (or imported) dict describes, over the defaults; `SettingsError` naming the first
        bad field."""
        settings, problems = _read(cls, stored)
        if problems:
            raise SettingsError(problems[0][1])
        return settings

    @classmethod
    def repaired(cls, stored: Any) -> tuple["NovelSettings", list[str]]:
        """(settings, problems): every bad field of `stored` replaced by its default, one line per bad field that
        names the default used."""
        settings, problems = _read(cls, stored)
        return settings, [message if name is None else f"{message} (the default {getattr(settings, name)!r} is used)"
                          for name, message in problems]

    @classmethod
    def from_form(cls, form: dict[str, Any], base: "NovelSettings | None" = None) -> "NovelSettings":
        """The Settings tab's form (`FORM_FIELDS` by name; the breakers as JSON text) over `base`'s other fields;
        `SettingsError` naming the first bad field."""
        values = {}
        for name in FORM_FIELDS:
            spec = SPECS[name]
            value = form.get(name)
            if spec.kind == "breakers":
                value = _breakers_from_text(name, value)
            if spec.kind == "text" and name == "model":
                value = str(value or "").strip() or "default"
            values[name] = _check(name, spec, value)
        settings = replace(base or cls(), **values)
        if settings.context_tokens <= settings.max_new_tokens:
            raise SettingsError(_too_small(settings))
        return settings

    # ------------------------------------------------------------------------------------------- writing

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able dict stored in `novel.settings`."""
        out: dict[str, Any] = {"sampling": {}, "penalties": {}}
        for item in fields(self):
            spec: Spec = item.metadata["spec"]
            value = getattr(self, item.name)
            if spec.kind == "breakers":
                value = list(value)
            (out[spec.group] if spec.group else out)[spec.key or item.name] = value
        return out

    def to_form(self) -> dict[str, Any]:
        """The Settings tab's values by field name (the breakers as JSON text)."""
        values = {name: getattr(self, name) for name in FORM_FIELDS}
        values["dry_sequence_breakers"] = json.dumps(list(self.dry_sequence_breakers), ensure_ascii=False)
        return values

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                              seed=self.seed)

    def penalty_params(self) -> PenaltyParams:
        return PenaltyParams(repetition=self.repetition, presence=self.presence, frequency=self.frequency,
                             range=self.penalty_range, dry_multiplier=self.dry_multiplier, dry_base=self.dry_base,
                             dry_allowed_length=self.dry_allowed_length,
                             dry_sequence_breakers=list(self.dry_sequence_breakers))


SPECS: dict[str, Spec] = {item.name: item.metadata["spec"] for item in fields(NovelSettings)}
# The Settings tab's fields, in declaration order (generated: adding a field above adds it to the form).
FORM_FIELDS = tuple(name for name, spec in SPECS.items() if spec.form)
DEFAULT_PENALTIES = NovelSettings().penalty_params().to_dict()


def check_stored(stored: Any) -> None:
    """Raise `SettingsError` if a stored or imported settings dict holds a bad value (the import check)."""
    NovelSettings.from_dict(stored)


def settings_notice(problems: list[str]) -> str:
    """One line telling the writer that a novel's stored settings were bad and the defaults are used for them."""
    return ("This novel's saved settings had bad values, so the defaults are used for them (save the Settings tab "
            "to keep them): " + "; ".join(problems) + ".")


def field_label(name: str) -> str:
    """How a message names a field: its stored name, and the Settings tab's name when that differs."""
    label = SPECS[name].label if name in SPECS else None
    return f"{name} ({label})" if label and label != name.replace("_", " ") else name


# ------------------------------------------------------------------------------------------- checks


def _read(cls, stored: Any) -> tuple[NovelSettings, list[tuple[str | None, str]]]:
    """The settings in `stored` over the defaults, and (field name or None, message) for every bad value."""
    if stored is None:
        stored = {}
    if not isinstance(stored, dict):
        return cls(), [(None, f"the settings must be an object, got {_shown(stored)}")]
    problems: list[tuple[str | None, str]] = []
    groups = {}
    for group in ("sampling", "penalties"):
        value = stored.get(group)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            problems.append((None, f"{group} must be an object, got {_shown(value)}"))
            value = {}
        groups[group] = value
    values = {}
    for item in fields(cls):
        spec: Spec = item.metadata["spec"]
        source = groups[spec.group] if spec.group else stored
        key = spec.key or item.name
        if key not in source or (source[key] is None and spec.kind != "seed"):
            continue
        try:
            values[item.name] = _check(item.name, spec, source[key])
        except SettingsError as exc:
            problems.append((item.name, str(exc)))
    settings = cls(**values)
    if settings.context_tokens <= settings.max_new_tokens:
        problems.append(("max_new_tokens", _too_small(settings)))
        settings = replace(settings, max_new_tokens=cls.max_new_tokens)
        if settings.context_tokens <= settings.max_new_tokens:
            settings = replace(settings, context_tokens=cls.context_tokens)
    return settings, problems


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bounds(spec: Spec) -> str:
    low, high = _plain(spec.low), _plain(spec.high)
    if spec.low_open and not spec.high_open:
        return f"above {low} and at most {high}"
    if spec.high_open and not spec.low_open:
        return f"from {low} up to (not including) {high}"
    return f"between {low} and {high}"


def _plain(value: float | None) -> str:
    return f"{value:g}" if value is not None and abs(value) < 1e6 else f"{value:.0f}"


def _check(name: str, spec: Spec, value: Any):
    where = field_label(name)
    if spec.kind in ("number", "whole"):
        whole = spec.kind == "whole"
        what = f"a {'whole ' if whole else ''}number {_bounds(spec)}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SettingsError(f"{where} must be {what}, got {_shown(value)}")
        if whole and value != int(value):
            raise SettingsError(f"{where} must be {what}, got {_shown(value)}")
        low_ok = value > spec.low if spec.low_open else value >= spec.low
        high_ok = value < spec.high if spec.high_open else value <= spec.high
        if not (low_ok and high_ok):
            raise SettingsError(f"{where} must be {what}, got {_shown(value)}")
        return int(value) if whole else float(value)
    if spec.kind == "seed":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            raise SettingsError(f"{where} must be a whole number from 0 or null, got {_shown(value)}")
        return value
    if spec.kind == "choice":
        if value not in spec.choices:
            raise SettingsError(f"{where} must be one of {', '.join(spec.choices)}, got {_shown(value)}")
        return value
    if spec.kind == "text":
        limit = MAX_MODEL_CHARS if name == "model" else MAX_OUTLINE_CHARS
        if not isinstance(value, str) or len(value) > limit or (name == "model" and not value.strip()):
            raise SettingsError(f"{where} must be {'a non-empty ' if name == 'model' else ''}text of at most "
                                f"{limit} characters, got {_shown(value)}")
        return value.strip() if name == "model" else value
    if spec.kind == "breakers":
        if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) and item for item in value) \
                or len(value) > 64:
            raise SettingsError(f'{where} must be a list of up to 64 non-empty texts, like ["\\n", ":"], got '
                                f"{_shown(value)}")
        return tuple(value)
    raise AssertionError(f"unknown setting kind {spec.kind!r}")


def _breakers_from_text(name: str, text: Any):
    try:
        return json.loads(text or "[]")
    except (TypeError, json.JSONDecodeError):
        raise SettingsError(f'{name} must be a JSON list of non-empty texts, like ["\\n", ":", "*"], got '
                            f"{_shown(text)}") from None


def _too_small(settings: NovelSettings) -> str:
    return (f"context_tokens (context budget, {settings.context_tokens} tokens) must be larger than the paragraph "
            f"length (max_new_tokens, {settings.max_new_tokens} tokens): the paragraph is written inside it")
