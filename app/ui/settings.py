"""The Settings tab: model, device and dtype, sampling, penalties, retrieval and memory length, saved per novel.

Every field has a one-line explanation. The per-novel settings dict the store keeps is
`{"model", "device", "dtype", "sampling": SamplingParams dict, "penalties": PenaltyParams dict,
"retrieval_top_k", "memory_words", "max_new_tokens", "context_tokens", "snapshot_budget_mb", "snapshot_dtype"}`;
`to_fields`/`from_fields` convert between it and the form.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import gradio as gr

from app.config import DEVICES, DTYPES
from app.ui import services
from app.ui.common import InputError, handler
from models.backend import STATE_DTYPES

# The form's fields, in the order `wire()` passes them to the handlers.
FIELD_NAMES = (
    "model", "device", "dtype", "temperature", "top_p", "min_p", "repetition", "presence", "frequency",
    "penalty_range", "dry_multiplier", "dry_base", "dry_allowed_length", "dry_sequence_breakers",
    "retrieval_top_k", "memory_words", "max_new_tokens", "context_tokens", "snapshot_budget_mb", "snapshot_dtype",
)
EXTRAS = ("retrieval_top_k", "memory_words", "max_new_tokens", "context_tokens", "snapshot_budget_mb")
# With no novel open, Save stores the form here (in the data dir) as the settings every new novel starts with.
NEW_NOVEL_DEFAULTS = "new-novel-settings.json"


def defaults() -> dict:
    from app.engine import DEFAULT_PENALTIES, DEFAULTS
    from models.sampling import PenaltyParams, SamplingParams

    return {"model": "default", "device": "auto", "dtype": "auto", "sampling": SamplingParams().to_dict(),
            "penalties": PenaltyParams.from_dict(DEFAULT_PENALTIES).to_dict(), **{name: DEFAULTS[name] for name in EXTRAS},
            "snapshot_dtype": DEFAULTS["snapshot_dtype"]}


def merged(settings: dict | None) -> dict:
    """A novel's saved settings over the defaults (keys saved by older versions keep their default)."""
    result = defaults()
    for key, value in (settings or {}).items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = {**result[key], **value}
        else:
            result[key] = value
    return result


def to_fields(settings: dict | None) -> dict:
    s = merged(settings)
    sampling, penalties = s["sampling"], s["penalties"]
    return {
        "model": s["model"], "device": s["device"], "dtype": s["dtype"],
        "temperature": sampling["temperature"], "top_p": sampling["top_p"], "min_p": sampling["min_p"],
        "repetition": penalties["repetition"], "presence": penalties["presence"],
        "frequency": penalties["frequency"], "penalty_range": penalties["range"],
        "dry_multiplier": penalties["dry_multiplier"], "dry_base": penalties["dry_base"],
        "dry_allowed_length": penalties["dry_allowed_length"],
        "dry_sequence_breakers": json.dumps(penalties["dry_sequence_breakers"], ensure_ascii=False),
        "retrieval_top_k": s["retrieval_top_k"], "memory_words": s["memory_words"],
        "max_new_tokens": s["max_new_tokens"], "context_tokens": s["context_tokens"],
        "snapshot_budget_mb": s["snapshot_budget_mb"], "snapshot_dtype": s["snapshot_dtype"],
    }


def _breakers(text: str) -> list[str]:
    try:
        value = json.loads(text or "[]")
    except json.JSONDecodeError:
        raise InputError('DRY sequence breakers must be a JSON list of strings, like ["\\n", ":", "*"].') from None
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise InputError('DRY sequence breakers must be a JSON list of non-empty strings, like ["\\n", ":"].')
    return value


def from_fields(fields: dict) -> dict:
    """Validate the form and build the settings dict; raises `InputError` naming the bad field."""
    from models.sampling import PenaltyParams, SamplingParams

    def number(name: str, cast=float):
        try:
            return cast(fields[name])
        except (TypeError, ValueError):
            raise InputError(f"{name.replace('_', ' ')} must be a number, got {fields[name]!r}.") from None

    model = str(fields.get("model") or "default").strip()
    if fields.get("device") not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}.")
    if fields.get("dtype") not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}.")
    try:
        sampling = SamplingParams(temperature=number("temperature"), top_p=number("top_p"), min_p=number("min_p"))
        penalties = PenaltyParams(
            repetition=number("repetition"), presence=number("presence"), frequency=number("frequency"),
            range=number("penalty_range", int), dry_multiplier=number("dry_multiplier"),
            dry_base=number("dry_base"), dry_allowed_length=number("dry_allowed_length", int),
            dry_sequence_breakers=_breakers(fields.get("dry_sequence_breakers", "[]")),
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None
    extras = {name: number(name, int) for name in EXTRAS}
    if not 0 <= extras["retrieval_top_k"] <= 20:
        raise InputError("retrieval top-k must be between 0 and 20.")
    if not 20 <= extras["memory_words"] <= 2000:
        raise InputError("memory length must be between 20 and 2000 words.")
    if not 1 <= extras["max_new_tokens"] <= 4096:
        raise InputError("paragraph length must be between 1 and 4096 tokens.")
    if not 256 <= extras["context_tokens"] <= 1_048_576:
        raise InputError("context budget must be between 256 and 1048576 tokens.")
    if extras["context_tokens"] <= extras["max_new_tokens"]:
        raise InputError(f"context budget ({extras['context_tokens']} tokens) must be larger than the paragraph "
                         f"length ({extras['max_new_tokens']} tokens): the paragraph is written inside it.")
    if not 0 <= extras["snapshot_budget_mb"] <= 1_000_000:
        raise InputError("snapshot disk budget must be between 0 and 1000000 MB.")
    if fields.get("snapshot_dtype") not in STATE_DTYPES:
        raise InputError(f"snapshot precision must be one of {', '.join(STATE_DTYPES)}.")
    return {"model": model, "device": fields["device"], "dtype": fields["dtype"],
            "sampling": sampling.to_dict(), "penalties": penalties.to_dict(), **extras,
            "snapshot_dtype": fields["snapshot_dtype"]}


def _defaults_path():
    return services.current().config.data_dir / NEW_NOVEL_DEFAULTS


def new_novel_defaults() -> dict:
    """The settings a new novel starts with: the built-in defaults, overridden by what the writer saved as such."""
    try:
        saved = json.loads(_defaults_path().read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        saved = {}
    return merged(saved if isinstance(saved, dict) else {})


def load_settings(novel_id: int) -> dict:
    from memory import store

    with services.current().session() as session:
        novel = store.get_novel(session, novel_id)
        return merged(novel.settings)


# ---------------------------------------------------------------- handlers


@handler
def refresh(novel_id):
    """The form's values for the open novel (the defaults for new novels when none is open), then the same values
    as one dict: what this page read, for save_settings' conflict check."""
    settings = load_settings(int(novel_id)) if novel_id not in (None, "") else new_novel_defaults()
    values = to_fields(settings)
    return (*(values[name] for name in FIELD_NAMES), values)


@handler
def save_settings(novel_id, read: dict | None, *values) -> tuple[dict, str]:
    """Save the form as the open novel's settings (with none open: as the defaults for new novels), unless another
    tab saved different settings since this page read `read` (None: no check). Returns the new `read`."""
    from memory import store

    settings = from_fields(dict(zip(FIELD_NAMES, values)))
    if settings["model"] != "default":
        from app.offline import resolve_model

        config = services.current().config
        resolve_model(settings["model"], config.models_dir, config.allow_download)
    if novel_id in (None, ""):
        path = _defaults_path()
        temporary = path.with_name(path.name + ".part")
        temporary.write_text(json.dumps(settings, indent=1), encoding="utf-8")
        temporary.replace(path)
        return to_fields(merged(settings)), "No novel is open: saved as the settings new novels start with."
    novel_id = int(novel_id)
    with services.current().session() as session, session.begin():
        current = to_fields(merged(store.get_novel(session, novel_id).settings))
        if read and current != read:
            changed = ", ".join(name.replace("_", " ") for name in FIELD_NAMES if current[name] != read.get(name))
            raise store.ConflictError(f"The settings were changed elsewhere ({changed}) since this page read them; "
                                      "nothing was saved: reopen the novel to see them, then make your change again.")
        store.update_novel_settings(session, novel_id, settings)
    return to_fields(merged(settings)), "Settings saved for this novel. The next step uses them."


@handler
def reset_settings() -> tuple:
    values = to_fields(defaults())
    return tuple(values[name] for name in FIELD_NAMES)


# ---------------------------------------------------------------- layout


@dataclass
class SettingsTab:
    fields: dict  # name -> component, in FIELD_NAMES order
    save_settings_btn: gr.Button
    reset_settings_btn: gr.Button
    status_md: gr.Markdown
    read: gr.State  # the saved settings as this page last read or saved them (the conflict check's baseline)


def build() -> SettingsTab:
    d = to_fields(defaults())
    f: dict = {}
    gr.Markdown("Saved per novel (with no novel open: the settings new novels start with). "
                "The line under each field says what it does.")
    with gr.Group():
        with gr.Row():
            f["model"] = gr.Dropdown(["default"], value=d["model"], allow_custom_value=True, label="Model",
                                     info="'default' (SmolLM2-135M, offline), a local folder or .gguf, "
                                          "or an OpenAI-compatible server URL", scale=3)
            f["device"] = gr.Dropdown(list(DEVICES), value=d["device"], label="Device",
                                      info="auto picks the GPU when there is one")
            f["dtype"] = gr.Dropdown(list(DTYPES), value=d["dtype"], label="Precision",
                                     info="bfloat16 halves memory on a GPU; CPUs want float32")
    with gr.Accordion("Sampling", open=True):
        with gr.Row():
            f["temperature"] = gr.Slider(0.0, 2.0, value=d["temperature"], step=0.05, label="Temperature",
                                         info="higher is more surprising, 0 always picks the likeliest word")
            f["top_p"] = gr.Slider(0.05, 1.0, value=d["top_p"], step=0.01, label="Top-p",
                                   info="sample only from the likeliest words making up this share")
            f["min_p"] = gr.Slider(0.0, 0.5, value=d["min_p"], step=0.01, label="Min-p",
                                   info="drop words less likely than this fraction of the top word")
    with gr.Accordion("Repetition penalties", open=True):
        with gr.Row():
            f["repetition"] = gr.Slider(1.0, 2.0, value=d["repetition"], step=0.01, label="Repetition",
                                        info="above 1 makes words already used less likely")
            f["presence"] = gr.Slider(0.0, 2.0, value=d["presence"], step=0.05, label="Presence",
                                      info="a flat penalty for any word already used")
            f["frequency"] = gr.Slider(0.0, 2.0, value=d["frequency"], step=0.05, label="Frequency",
                                       info="a penalty growing with how often a word was used")
            f["penalty_range"] = gr.Number(value=d["penalty_range"], precision=0, minimum=0, label="Range",
                                           info="how many recent tokens the three look at (0 = all)")
        with gr.Row():
            f["dry_multiplier"] = gr.Slider(0.0, 3.0, value=d["dry_multiplier"], step=0.05, label="DRY multiplier",
                                            info="DRY stops repeated phrases; 0 turns it off, 0.8 is typical")
            f["dry_base"] = gr.Slider(1.0, 4.0, value=d["dry_base"], step=0.05, label="DRY base",
                                      info="how fast the penalty grows with the repeat's length")
            f["dry_allowed_length"] = gr.Number(value=d["dry_allowed_length"], precision=0, minimum=1,
                                                label="DRY allowed length",
                                                info="repeats up to this many tokens are free")
            f["dry_sequence_breakers"] = gr.Textbox(value=d["dry_sequence_breakers"], label="DRY sequence breakers",
                                                    info="JSON list; a repeat never spans one of these")
    with gr.Accordion("Memory and length", open=True):
        with gr.Row():
            f["retrieval_top_k"] = gr.Slider(0, 20, value=d["retrieval_top_k"], step=1, label="Retrieval top-k",
                                             info="earlier paragraphs recalled into each step's context")
            f["memory_words"] = gr.Slider(20, 2000, value=d["memory_words"], step=10,
                                          label="Short-term memory length",
                                          info="the running summary is kept under this many words")
            f["max_new_tokens"] = gr.Slider(1, 4096, value=d["max_new_tokens"], step=1,
                                            label="Paragraph length (tokens)",
                                            info="the most tokens one paragraph may take")
        with gr.Row():
            f["context_tokens"] = gr.Number(value=d["context_tokens"], precision=0, minimum=256,
                                            label="Context budget (tokens)",
                                            info="prompt plus paragraph; the model's own window caps it")
            f["snapshot_budget_mb"] = gr.Number(value=d["snapshot_budget_mb"], precision=0, minimum=0,
                                                label="State snapshots (MB on disk)",
                                                info="Mamba2 models: saved states let a step skip re-reading "
                                                     "the manuscript; 0 keeps none")
            f["snapshot_dtype"] = gr.Dropdown(list(STATE_DTYPES), value=d["snapshot_dtype"],
                                              label="Snapshot precision",
                                              info="bf16 halves the disk a snapshot takes; fp32 is exact")
    with gr.Row():
        save_settings_btn = gr.Button("Save settings", variant="primary", elem_id="save_settings_btn")
        reset_settings_btn = gr.Button("Back to defaults", elem_id="reset_settings_btn")
    status_md = gr.Markdown("", elem_id="settings_status")
    for name, component in f.items():
        component.elem_id = f"setting_{name}"
    return SettingsTab(f, save_settings_btn, reset_settings_btn, status_md, gr.State(None))


def refresh_outputs(tab: SettingsTab) -> list:
    return [tab.fields[name] for name in FIELD_NAMES] + [tab.read]


def wire(tab: SettingsTab, novel_state: gr.State) -> None:
    inputs = [novel_state, tab.read] + [tab.fields[name] for name in FIELD_NAMES]
    tab.save_settings_btn.click(save_settings, inputs, [tab.read, tab.status_md])
    tab.reset_settings_btn.click(reset_settings, None, [tab.fields[name] for name in FIELD_NAMES])
