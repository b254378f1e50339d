"""The Context tab: the engine's inspector, showing the exact text the next step will send to the model,
the token count of each section, the budget, and why each retrieved passage was chosen. Refreshed when the tab
is opened and on demand.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from app.ui import services
from app.ui.common import bind, clean_text, components, handler, returns

SECTION_HEADERS = ["section", "tokens", "in the prompt"]


def _why_retrieved(preview) -> str:
    """One Markdown line per retrieved passage in the prompt: which paragraph, why, and the sentence that matched."""
    lines = []
    for item in preview.retrieved:
        line = f"- paragraph {item.position}: {item.why or 'retrieved'}"
        if item.sentence:
            line += f" — matched: “{item.sentence}”"
        lines.append(line)
    notice = f"\n\n{preview.retrieval_notice}" if preview.retrieval_notice else ""
    return (("**Why these passages**\n" + "\n".join(lines)) if lines else "No earlier passages retrieved.") + notice


@handler
@returns("context_box", "sections_table", "budget_md", "retrieved_md")
def inspect(novel_id, instruction: str):
    """The prompt text, its section rows, the budget line and why each retrieved passage was chosen, for the next
    step with `instruction` as its plan."""
    if novel_id in (None, ""):
        return {"context_box": "", "sections_table": [],
                "budget_md": "Open a novel to see what the next step will read.", "retrieved_md": ""}
    novel_id = int(novel_id)
    plan = clean_text(instruction, "The instruction")
    preview = services.current().engine().inspect_context(novel_id, plan)
    rows = [[section.name, section.tokens,
             "dropped" if not section.kept else ("shortened" if section.truncated else "yes")]
            for section in preview.sections]
    stage = "the opening" if preview.stage == "opening" else "the next paragraph"
    budget = (f"Prompt for {stage}: **{preview.total_tokens:,}** tokens of a {preview.budget:,}-token budget "
              f"· strategy: {preview.strategy}")
    if preview.manuscript_tokens:
        budget += f" · plus {preview.manuscript_tokens:,} manuscript tokens read into the model's state"
    if preview.dropped:
        budget += f" · dropped to fit: {', '.join(preview.dropped)}"
    return {"context_box": preview.prompt_text, "sections_table": rows, "budget_md": budget,
            "retrieved_md": _why_retrieved(preview)}


@dataclass
class ContextTab:
    budget_md: gr.Markdown
    sections_table: gr.Dataframe
    retrieved_md: gr.Markdown
    context_box: gr.Textbox
    refresh_context_btn: gr.Button


def build() -> ContextTab:
    gr.Markdown("The exact text the next step will send, built from the plan in the Write tab's instruction box.")
    budget_md = gr.Markdown("", elem_id="context_budget")
    sections_table = gr.Dataframe(headers=SECTION_HEADERS, interactive=False, label="Tokens per section",
                                  elem_id="context_sections")
    retrieved_md = gr.Markdown("", elem_id="context_retrieved")
    context_box = gr.Textbox(label="Prompt of the next step", lines=20, max_lines=60, interactive=False,
                             elem_id="context_box")
    refresh_context_btn = gr.Button("Refresh", elem_id="refresh_context_btn")
    return ContextTab(budget_md, sections_table, retrieved_md, context_box, refresh_context_btn)


def wire(tab: ContextTab, context_tab: gr.Tab, novel_state: gr.State, instruction_box: gr.Textbox) -> None:
    roles = components(tab)
    context_tab.select(inputs=[novel_state, instruction_box], **bind(inspect, roles))
    tab.refresh_context_btn.click(inputs=[novel_state, instruction_box], **bind(inspect, roles))
