"""The Gradio app: `build_app(...)` assembles the tabs, `launch(...)` serves it on 127.0.0.1 by default."""

from __future__ import annotations

from app.config import Config
from app.offline import ModelSource


def build_app(config: Config, source: ModelSource):
    import gradio as gr

    with gr.Blocks(title="Longhand") as demo:
        gr.Markdown(f"# Longhand\nModel: **{source.name}**. Data folder: `{config.data_dir}`.")
    return demo


def launch(config: Config, source: ModelSource, check_only: bool = False) -> int:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    demo = build_app(config, source)
    if check_only:
        print(f"longhand: ok (model {source.name} at {source.location})")
        return 0
    demo.queue().launch(
        server_name=config.host,
        server_port=config.port,
        auth=config.auth_pair,
        share=config.share,
        enable_monitoring=False,
        max_file_size="20mb",
    )
    return 0
