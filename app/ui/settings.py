"""The Settings tab: model, device and dtype, sampling, penalties, retrieval and memory length, saved per novel.

Every field has a one-line explanation. The fields, their defaults and their checks are
`app.engine.settings.NovelSettings` (the form shows its `FORM_FIELDS`); this module only lays them out. With no
novel open, Save stores the form as the settings new novels start with.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import gradio as gr

from app.config import DEVICES, DTYPES, check_model_allowed
from app.engine.settings import FORM_FIELDS, NovelSettings, SettingsError, settings_notice
from app.offline import resolve_model
from app.ui import services
from app.ui.common import InputError, bind, components, handler, returns
from memory import store
from memory.errors import ConflictError
from models.backend import STATE_DTYPES

# With no novel open, Save stores the form here (in the data dir) as the settings every new novel starts with.
NEW_NOVEL_DEFAULTS = "new-novel-settings.json"


def _defaults_path():
    return services.current().config.data_dir / NEW_NOVEL_DEFAULTS


def new_novel_defaults() -> NovelSettings:
    """The settings a new novel starts with: the built-in defaults, overridden by what the writer saved as such
    (a bad value there falls back to its default)."""
    try:
        saved = json.loads(_defaults_path().read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        saved = {}
    return NovelSettings.repaired(saved)[0]


def load_settings(novel_id: int) -> tuple[NovelSettings, list[str]]:
    """The open novel's settings, and one line per stored value that was bad (its default is used instead)."""
    with services.current().session() as session:
        return NovelSettings.repaired(store.get_novel(session, novel_id).settings)


def check_model(model: str) -> None:
    """Refuse a model the app cannot use: a missing path, or a server this launch does not allow."""
    if model == "default":
        return
    config = services.current().config
    check_model_allowed(model, config)
    resolve_model(model, config.models_dir, config.allow_download)


def _form(form: dict, base: NovelSettings | None = None) -> NovelSettings:
    try:
        return NovelSettings.from_form(form, base)
    except SettingsError as exc:
        raise InputError(f"{exc}.") from None


# ---------------------------------------------------------------- handlers


def form_values(novel_id) -> tuple[dict, str]:
    """The form's values by field name for the open novel (the defaults for new novels when none is open), and a
    notice when its stored settings held bad values."""
    if novel_id in (None, ""):
        return new_novel_defaults().to_form(), ""
    settings, problems = load_settings(int(novel_id))
    return settings.to_form(), settings_notice(problems) if problems else ""


@handler
@returns("fields", "read", "status_md")
def refresh(novel_id):
    """The form's values by field name, the same values as what this page read (for save_settings' conflict
    check), and the status line (a notice when the stored settings were bad)."""
    values, notice = form_values(novel_id)
    return {"fields": values, "read": dict(values), "status_md": notice}


@handler
@returns("read", "status_md")
def save_settings(novel_id, read: dict | None, form: dict) -> dict:
    """Save the form (values by field name) as the open novel's settings (with none open: as the defaults for new
    novels), unless another tab saved different settings since this page read `read` (None: no check). Returns the
    new `read` and a status line."""
    if novel_id in (None, ""):
        settings = _form(form)
        check_model(settings.model)
        path = _defaults_path()
        temporary = path.with_name(path.name + ".part")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(settings.to_dict(), indent=1))
        temporary.replace(path)
        return {"read": settings.to_form(),
                "status_md": "No novel is open: saved as the settings new novels start with."}
    novel_id = int(novel_id)
    # Checked before the write transaction: resolving a hub model may download it.
    check_model(_form(form).model)
    with services.current().session() as session, session.begin():
        stored, _ = NovelSettings.repaired(store.get_novel(session, novel_id).settings)
        current = stored.to_form()
        if read and current != read:
            changed = ", ".join(name.replace("_", " ") for name in FORM_FIELDS if current[name] != read.get(name))
            raise ConflictError(f"The settings were changed elsewhere ({changed}) since this page read them; "
                                      "nothing was saved: reopen the novel to see them, then make your change again.")
        # The fields the form does not show (the outline, the mode, ...) keep the novel's own values.
        settings = _form(form, stored)
        store.update_novel_settings(session, novel_id, settings.to_dict())
    return {"read": settings.to_form(), "status_md": "Settings saved for this novel. The next step uses them."}


@handler
@returns("fields")
def reset_settings() -> dict:
    """The built-in defaults, by field name."""
    return {"fields": NovelSettings().to_form()}


# ---------------------------------------------------------------- layout


@dataclass
class SettingsTab:
    fields: dict  # field name (app.engine.settings.FORM_FIELDS) -> component
    save_settings_btn: gr.Button
    reset_settings_btn: gr.Button
    status_md: gr.Markdown
    read: gr.State  # the saved settings as this page last read or saved them (the conflict check's baseline)


def build() -> SettingsTab:
    d = NovelSettings().to_form()
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
            f["candidates"] = gr.Slider(1, 4, value=d["candidates"], step=1, label="Versions per step",
                                        info="Next step and Retry write this many; pick one, the rest are kept")
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
    if set(f) != set(FORM_FIELDS):
        raise AssertionError(f"the Settings tab lays out {sorted(f)}, but NovelSettings' form fields are "
                             f"{sorted(FORM_FIELDS)}")
    for name, component in f.items():
        component.elem_id = f"setting_{name}"
    return SettingsTab(f, save_settings_btn, reset_settings_btn, status_md, gr.State(None))


def wire(tab: SettingsTab, novel_state: gr.State) -> None:
    roles = components(tab)

    # A set of inputs reaches the function as one {component: value} dict: no list here means anything by its
    # position.
    @returns(*save_settings.roles)
    def save(values: dict) -> dict:
        form = {name: values[component] for name, component in tab.fields.items()}
        return save_settings(values[novel_state], values[tab.read], form)

    tab.save_settings_btn.click(inputs={novel_state, tab.read, *tab.fields.values()}, **bind(save, roles))
    tab.reset_settings_btn.click(inputs=None, **bind(reset_settings, roles))
