"""The Gradio app: `build_app(...)` assembles the tabs, `launch(...)` serves it on 127.0.0.1 by default.

One module per tab (library, write, memory_tab, context, settings, reader, story_chart), each with `build()` and
`wire()` over plain handler functions. The open novel's id lives in a `gr.State` and, so that a reload restores it,
in the browser's localStorage (`gr.BrowserState`). Nothing of the data dir is served: Gradio gets it as a blocked
path, and an export is copied to a fresh temp folder before it is offered for download.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from app.config import Config
from app.offline import ModelSource

CSS = """
.lh-manuscript { max-height: 60vh; overflow-y: auto; padding: 0 0.5em; }
.lh-manuscript h2 { margin-top: 0.2em; }
.lh-para { line-height: 1.55; margin: 0 0 0.8em 0; }
.lh-num { display: inline-block; min-width: 2em; color: var(--body-text-color-subdued); font-size: 0.8em;
          font-variant-numeric: tabular-nums; }
#reader_story { font-size: 1.08em; line-height: 1.6; }
"""
UPLOAD_LIMIT = "10mb"


def _browser_secret(config: Config) -> str:
    """The key that encrypts the open novel's id in localStorage; kept in the data dir so it survives restarts."""
    path = config.data_dir / "ui-secret"
    try:
        secret = path.read_text(encoding="ascii").strip()
        if len(secret) >= 16:
            return secret
    except OSError:
        pass
    secret = secrets.token_urlsafe(24)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secret)
    return secret


def remember_novel(novel_id):
    """What the browser keeps across reloads."""
    return {"novel_id": novel_id}


def restore_novel(saved: dict | None):
    """On page load: the novel the browser had open, if it still exists."""
    from memory import store
    from app.ui import services

    novel_id = (saved or {}).get("novel_id")
    if novel_id in (None, ""):
        return None
    try:
        with services.current().session() as session:
            store.get_novel(session, int(novel_id))
    except (store.NotFoundError, ValueError, TypeError):
        return None
    return int(novel_id)


def header(novel_id) -> str:
    from memory import store
    from app.ui import services
    from app.ui.common import escape

    svc = services.current()
    model = f"Model **{svc.source.name}**"
    if novel_id in (None, ""):
        return f"## Longhand\n{model} · no novel open"
    with svc.session() as session:
        title = store.get_novel(session, int(novel_id)).title
    return f"## Longhand · {escape(title)}\n{model} · novel #{novel_id}"


def build_app(config: Config, source: ModelSource, installed=None):
    """The whole app. `installed` (a `services.Services`) lets tests share one store and model with handlers."""
    import gradio as gr

    from app.ui import context, library, memory_tab, reader, services, settings, story_chart, write
    from app.ui.common import GENERATION, handler

    if installed is None:
        installed = services.Services(config=config, source=source, session_factory=services.open_store(config))
    services.install(installed)

    # delete_cache: downloads Gradio copied into its cache are removed after an hour.
    with gr.Blocks(title="Longhand", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        novel_state = gr.State(None)
        browser = gr.BrowserState(remember_novel(None), storage_key="longhand-open-novel",
                                  secret=_browser_secret(config))
        header_md = gr.Markdown(header(None), elem_id="header")
        with gr.Tabs(selected="library") as tabs:
            with gr.Tab("Library", id="library"):
                library_tab = library.build()
            with gr.Tab("Write", id="write"):
                write_tab = write.build()
            with gr.Tab("Memory", id="memory"):
                memory_ui = memory_tab.build()
            with gr.Tab("Context", id="context") as context_tab_block:
                context_tab = context.build()
            with gr.Tab("Settings", id="settings"):
                settings_tab = settings.build()
            with gr.Tab("Reader", id="reader"):
                reader_tab = reader.build()
            with gr.Tab("Story chart", id="chart"):
                chart_tab = story_chart.build()

        tab_refreshes = [
            (library.refresh, library.refresh_outputs(library_tab)),
            (write.refresh, write.refresh_outputs(write_tab)),
            (memory_tab.refresh, memory_tab.refresh_outputs(memory_ui)),
            (settings.refresh, settings.refresh_outputs(settings_tab)),
            (reader.refresh, reader.refresh_outputs(reader_tab)),
            (story_chart.refresh, story_chart.refresh_outputs(chart_tab)),
        ]
        all_outputs = [header_md] + [component for _, outputs in tab_refreshes for component in outputs]

        @handler
        def refresh_all(novel_id):
            values = [header(novel_id)]
            for refresh, outputs in tab_refreshes:
                result = refresh(novel_id)
                values.extend(result if len(outputs) > 1 else [result])
            return tuple(values)

        def on_novel_changed(dependency):
            """After an event that may have changed the open novel or its text: remember it, redraw every tab."""
            return dependency.then(remember_novel, [novel_state], [browser], queue=False) \
                .then(refresh_all, [novel_state], all_outputs)

        library.wire(library_tab, novel_state, on_novel_changed)
        write.wire(write_tab, novel_state, on_novel_changed)
        memory_tab.wire(memory_ui, novel_state, on_novel_changed)
        context.wire(context_tab, context_tab_block, novel_state, write_tab.instruction_box)
        settings.wire(settings_tab, novel_state)
        reader.wire(reader_tab, novel_state, on_novel_changed)
        story_chart.wire(chart_tab, novel_state)

        # Create: save the novel, show the Write tab, stream the opening, then redraw everything.
        created = library_tab.create_btn.click(
            library.create_novel,
            [library_tab.premise_box, library_tab.genre_box, library_tab.style_box, library_tab.model_box],
            [novel_state, library_tab.status_md])
        opened = created.success(lambda: gr.Tabs(selected="write"), None, [tabs], queue=False) \
            .then(remember_novel, [novel_state], [browser], queue=False) \
            .then(refresh_all, [novel_state], all_outputs)
        on_novel_changed(opened.then(write.start_story, [novel_state], write.stream_outputs(write_tab),
                                     **GENERATION))

        # A reload: the browser still knows which novel was open.
        demo.load(restore_novel, [browser], [novel_state]).then(refresh_all, [novel_state], all_outputs)
    return demo


def launch_options(config: Config) -> dict:
    """Everything `Blocks.launch` is told; private by default (see the module docstring)."""
    return {
        "server_name": config.host,
        "server_port": config.port,
        "auth": config.auth_pair,
        "share": config.share,
        "enable_monitoring": False,
        "max_file_size": UPLOAD_LIMIT,
        # Nothing under the data dir is served: not the database, backups, model caches or earlier exports.
        "blocked_paths": [str(Path(config.data_dir).resolve())],
        "allowed_paths": [],
        # Gradio would otherwise keep every call's inputs and outputs (the manuscript) in the browser's storage.
        "run_history": False,
        "mcp_server": False,
        "ssr_mode": False,
        "css": CSS,
        "footer_links": ["gradio", "settings"],
    }


def launch(config: Config, source: ModelSource, check_only: bool = False) -> int:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    demo = build_app(config, source)
    if check_only:
        print(f"longhand: ok (model {source.name} at {source.location})")
        return 0
    demo.queue(default_concurrency_limit=4).launch(**launch_options(config))
    return 0
