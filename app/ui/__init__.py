"""The Gradio app: `build_app(...)` assembles the tabs, `launch(...)` serves it on 127.0.0.1 by default.

One module per tab (library, write with its manuscript editor, chapters panel and versions panel, memory_tab,
context, settings, reader, story_chart), each with `build()` and `wire()` over plain handler functions. After an
edit only the tab it came from is redrawn; the others are redrawn when next opened, if the novel changed since
(app/ui/redraw.py). The open novel's id lives in a `gr.State` and, so that a reload restores it,
in the browser's localStorage (`gr.BrowserState`). Nothing of the data dir is served: Gradio gets its contents as
blocked paths (all but Gradio's own upload and cache folder, `<data dir>/gradio`, which it serves from), and an
export is copied to a fresh temp folder before it is offered for download. `guard.HostOriginGuard` sits in front of
every route: only this app's own pages, at an allowed Host, may use it.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.middleware import Middleware

from app.config import Config
from app.offline import ModelSource
from app.ui.guard import HostOriginGuard, Policy
from memory.errors import NotFoundError
from memory.private import private_dir

CSS = """
.lh-manuscript { max-height: 60vh; overflow-y: auto; padding: 0 0.5em; }
.lh-manuscript h2 { margin-top: 0.2em; }
.lh-para { line-height: 1.55; margin: 0 0 0.8em 0; }
.lh-num { display: inline-block; min-width: 2em; color: var(--body-text-color-subdued); font-size: 0.8em;
          font-variant-numeric: tabular-nums; }
#reader_story { font-size: 1.08em; line-height: 1.6; }
.lh-para { cursor: pointer; border-radius: 4px; }
.lh-para:hover { background: var(--background-fill-secondary); }
.lh-written { border-left: 3px solid var(--color-accent); padding-left: 0.4em; }
.lh-focus { background: var(--color-accent-soft); }
.lh-badge { margin-left: 0.5em; padding: 0 0.45em; border-radius: 0.7em; font-size: 0.75em; white-space: nowrap;
            background: var(--background-fill-secondary); border: 1px solid var(--border-color-primary);
            color: var(--body-text-color-subdued); }
"""
# The Write tab's keyboard and flow, in the page (no round trip): Ctrl+Enter (or Cmd+Enter) in the instruction box
# runs Next step; a click on a paragraph chooses it in the editor; choosing a paragraph by number brings it into view;
# and after each redraw of the manuscript the paragraph the editor just moved to (window.lhFocus, set when the
# editor's number changes, app/ui/manuscript.py) or else a new last paragraph (a step, Add at end) is brought into
# view and marked. Gradio 6 redraws an HTML component by patching its nodes in place (the manuscript's element stays,
# and so does its scroll), so a redraw is noticed from the mutations of the manuscript's nodes, once per frame.
SCRIPT = """
<script>
(() => {
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey) && event.target.closest('#instruction_box')) {
      event.preventDefault();
      document.querySelector('#next_step_btn')?.click();
    }
  });
  document.addEventListener('click', (event) => {
    const paragraph = event.target.closest('#manuscript .lh-para');
    const input = document.querySelector('#para_number input');
    if (!paragraph || !input) return;
    input.value = paragraph.dataset.position;
    input.dispatchEvent(new Event('input', {bubbles: true}));
    input.dispatchEvent(new Event('change', {bubbles: true}));
  });
  // A focus is for the redraw that follows the editor's move (an edit's response comes first, its redraw next).
  const FOCUS_MS = 5000;
  const manuscript = () => document.querySelector('#manuscript .lh-manuscript');
  const reveal = (box, target) => {
    const boxRect = box.getBoundingClientRect(), rect = target.getBoundingClientRect();
    if (rect.top < boxRect.top || rect.bottom > boxRect.bottom) {
      box.scrollTop += rect.top - boxRect.top - Math.max((box.clientHeight - rect.height) / 2, 24);
    }
    target.scrollIntoView({block: 'nearest'});
  };
  window.lhShow = (position) => {
    const box = manuscript();
    const target = box?.querySelector(`.lh-para[data-position="${position}"]`);
    if (target) reveal(box, target);
  };
  let last = {heading: null, count: -1};
  let scheduled = false;
  const settle = () => {
    scheduled = false;
    const box = manuscript();
    if (!box) return;
    const paragraphs = box.querySelectorAll('.lh-para');
    const heading = box.querySelector('h2')?.textContent ?? '';
    const focus = window.lhFocus;
    let target = null;
    if (focus && Date.now() - focus.at < FOCUS_MS) {
      target = box.querySelector(`.lh-para[data-position="${focus.position}"]`);
      window.lhFocus = null;
    } else if (heading === last.heading && paragraphs.length > last.count) {
      target = paragraphs[paragraphs.length - 1];
    }
    box.querySelectorAll('.lh-focus').forEach((element) => element.classList.remove('lh-focus'));
    if (target) {
      reveal(box, target);
      target.classList.add('lh-focus');
    }
    last = {heading: heading, count: paragraphs.length};
  };
  // The manuscript's own nodes only: Gradio's progress overlay inside #manuscript changes when an event starts,
  // before the new text has arrived.
  const isText = (node) => !!(node.nodeType === 1 ? node : node.parentElement)?.closest('#manuscript .lh-manuscript');
  const isDrawn = (mutation) => isText(mutation.target)
    || Array.from(mutation.addedNodes).some((node) => node.nodeType === 1 && node.closest('#manuscript')
                                          && (node.matches('.lh-manuscript') || node.querySelector('.lh-manuscript')));
  new MutationObserver((mutations) => {
    if (scheduled || !mutations.some(isDrawn)) return;
    scheduled = true;
    requestAnimationFrame(settle);
  }).observe(document.documentElement, {childList: true, subtree: true, characterData: true});
})();
</script>
"""
UPLOAD_LIMIT = "10mb"
# All files and fields of one request together: one file at the limit, with room for the form around it.
REQUEST_LIMIT_BYTES = 16 * 1024 * 1024
GRADIO_DIR_NAME = "gradio"


class LaunchError(RuntimeError):
    """The app cannot be served as asked; the message says why in one line."""


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
    private_dir(config.data_dir)
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
    except (NotFoundError, ValueError, TypeError):
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

    from app.ui import services
    from app.wiring import open_parts

    if installed is None:
        installed = services.Services(open_parts(config, source=source))
    services.install(installed)

    # delete_cache: downloads Gradio copied into its cache are removed after an hour.
    with gr.Blocks(title="Longhand", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        layout = _build_layout(config)
        _wire(demo, layout)
    return demo


@dataclass
class _Layout:
    """Every tab's components (each tab module's own dataclass) and the `gr.Tab` blocks whose opening redraws."""

    novel_state: Any
    browser: Any
    header_md: Any
    tabs: Any
    library_tab: Any
    library_block: Any
    write_tab: Any
    write_block: Any
    chapters_panel: Any
    versions_tab: Any
    memory_ui: Any
    memory_block: Any
    context_tab: Any
    context_block: Any
    settings_tab: Any
    reader_tab: Any
    reader_block: Any
    chart_tab: Any
    chart_block: Any


def _build_layout(config: Config) -> _Layout:
    """The page: the header and seven tabs, each built by its module (inside the caller's `gr.Blocks`)."""
    import gradio as gr

    from app.ui import alternatives, chapters, context, library, memory_tab, reader, settings, story_chart, write

    novel_state = gr.State(None)
    browser = gr.BrowserState(remember_novel(None), storage_key="longhand-open-novel",
                              secret=_browser_secret(config))
    header_md = gr.Markdown(header(None), elem_id="header")
    with gr.Tabs(selected="library") as tabs:
        with gr.Tab("Library", id="library") as library_block:
            library_tab = library.build()
        with gr.Tab("Write", id="write") as write_block:
            write_tab = write.build()
            chapters_panel = chapters.build()
            versions_tab = alternatives.build()
        with gr.Tab("Memory", id="memory") as memory_block:
            memory_ui = memory_tab.build()
        with gr.Tab("Context", id="context") as context_block:
            context_tab = context.build()
        with gr.Tab("Settings", id="settings"):
            settings_tab = settings.build()
        with gr.Tab("Reader", id="reader") as reader_block:
            reader_tab = reader.build()
        with gr.Tab("Story chart", id="chart") as chart_block:
            chart_tab = story_chart.build()
    return _Layout(novel_state=novel_state, browser=browser, header_md=header_md, tabs=tabs,
                   library_tab=library_tab, library_block=library_block, write_tab=write_tab,
                   write_block=write_block, chapters_panel=chapters_panel, versions_tab=versions_tab,
                   memory_ui=memory_ui, memory_block=memory_block, context_tab=context_tab,
                   context_block=context_block, settings_tab=settings_tab, reader_tab=reader_tab,
                   reader_block=reader_block, chart_tab=chart_tab, chart_block=chart_block)


def _wire(demo, ui: _Layout) -> None:
    """Every event of the page: each tab's own (its module's `wire()`), which parts redraw after them, opening a
    tab, creating a novel, and the page load."""
    import gradio as gr

    from app.ui import (alternatives, chapters, context, library, manuscript, memory_tab, reader, redraw,
                        settings, story_chart, write)
    from app.ui.common import GENERATION, bind, components, handler, outputs, to_components

    novel_state, write_tab = ui.novel_state, ui.write_tab
    # Which parts redraw together (app/ui/redraw.py). After an edit only the tab it came from is drawn again;
    # the others are drawn when they are opened, if the novel changed since. The Context tab and the Story chart
    # are drawn on every opening (the one reads the instruction box, the other's figures cost the most).
    write_panel = redraw.Panel("write", [(write.refresh, components(write_tab)),
                                         (chapters.refresh, components(ui.chapters_panel)),
                                         (alternatives.refresh, components(ui.versions_tab))])
    memory_panel = redraw.Panel("memory", [(memory_tab.refresh, components(ui.memory_ui))])
    reader_panel = redraw.Panel("reader", [(reader.refresh, components(ui.reader_tab))])
    library_panel = redraw.Panel("library", [(library.refresh, components(ui.library_tab, novel_id=novel_state))])
    reselect = manuscript.reselect_event(write_tab.editor, novel_state)
    # After the open novel itself changed (opened, renamed, deleted, imported; a page load): the header, the
    # Library the writer is on, the Settings form, and the Write tab, ready when it is clicked.
    identity_refreshes = [(settings.refresh, components(ui.settings_tab))]
    all_outputs = [ui.header_md] + library_panel.outputs + write_panel.outputs + [
        component for refresh, roles in identity_refreshes for component in outputs(refresh, roles)]

    @handler
    def refresh_all(novel_id) -> dict:
        values = {ui.header_md: header(novel_id), **library_panel.values(novel_id), **write_panel.values(novel_id)}
        for refresh, roles in identity_refreshes:
            values.update(to_components(refresh(novel_id), roles))
        return values

    def on_novel_opened(dependency):
        """After an event that may have changed which novel is open: remember it, redraw what shows it."""
        return dependency.then(remember_novel, [novel_state], [ui.browser], queue=False) \
            .then(refresh_all, [novel_state], all_outputs, queue=False).then(**reselect)

    def on_change_in(panel: redraw.Panel):
        """`on_novel_changed` for the events of `panel`'s tab: that tab is drawn again at once (the Write tab's
        editor then reloads its paragraph); the other tabs when they are next opened."""
        def on_novel_changed(dependency):
            drawn = dependency.then(**panel.draw_event(novel_state))
            return drawn.then(**reselect) if panel is write_panel else drawn
        return on_novel_changed

    library.wire(ui.library_tab, novel_state, on_novel_opened)
    write.wire(write_tab, novel_state, on_change_in(write_panel))
    chapters.wire(ui.chapters_panel, novel_state, on_change_in(write_panel), stream_to=write_tab)
    alternatives.wire(ui.versions_tab, novel_state, on_change_in(write_panel))
    memory_tab.wire(ui.memory_ui, novel_state, on_change_in(memory_panel))
    context.wire(ui.context_tab, ui.context_block, novel_state, write_tab.instruction_box)
    settings.wire(ui.settings_tab, novel_state)
    reader.wire(ui.reader_tab, novel_state, on_change_in(reader_panel))
    story_chart.wire(ui.chart_tab, ui.chart_block, novel_state)
    for block, panel in [(ui.write_block, write_panel), (ui.memory_block, memory_panel),
                         (ui.reader_block, reader_panel), (ui.library_block, library_panel)]:
        opened_tab = block.select(**panel.when_stale_event(novel_state))
        if panel is write_panel:
            opened_tab.then(**reselect)

    # Create: save the novel, show the Write tab, stream the opening, then redraw everything.
    library_tab = ui.library_tab
    created = library_tab.create_btn.click(
        inputs=[library_tab.premise_box, library_tab.genre_box, library_tab.style_box, library_tab.model_box],
        **bind(library.create_novel, components(library_tab, novel_id=novel_state)))
    opened = created.success(lambda: gr.Tabs(selected="write"), None, [ui.tabs], queue=False) \
        .then(remember_novel, [novel_state], [ui.browser], queue=False) \
        .then(refresh_all, [novel_state], all_outputs, queue=False)
    started = opened.then(inputs=[novel_state], **bind(write.start_story, components(write_tab)), **GENERATION)
    on_change_in(write_panel)(started)

    # A reload: the browser still knows which novel was open.
    # Not queued (reads only): each queued event of the chain costs the page a queue round trip.
    demo.load(restore_novel, [ui.browser], [novel_state], queue=False) \
        .then(refresh_all, [novel_state], all_outputs, queue=False).then(**reselect)


def gradio_dir(config: Config) -> Path:
    """Gradio's upload and cache folder: inside the private data dir, not a /tmp folder other users can list."""
    return Path(config.data_dir).resolve() / GRADIO_DIR_NAME


def use_private_gradio_dir(config: Config) -> Path:
    """Point Gradio's temp and cache folders into the data dir. Before gradio is imported: some of its modules read
    GRADIO_TEMP_DIR once, at import time."""
    folder = private_dir(gradio_dir(config))
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(folder / "cached_examples")
    return folder


def blocked_paths(config: Config) -> list[str]:
    """Everything in the data dir except Gradio's own folder: the database, backups, exports, model caches,
    snapshots, the browser secret, and whatever else is there at launch."""
    data_dir = Path(config.data_dir).resolve()
    found = {config.backups_dir, config.exports_dir, config.models_dir, data_dir / "longhand.db"}
    found.update(data_dir.iterdir() if data_dir.is_dir() else [])
    return sorted(str(Path(path).resolve()) for path in found if Path(path).name != GRADIO_DIR_NAME)


def file_inputs(demo) -> dict[str, set[int]]:
    """The positions of file inputs of every event, by fn_index and by api name (see `guard.Policy`)."""
    # gradio is imported inside functions in this module: use_private_gradio_dir must run before its first import.
    import gradio as gr

    found = {}
    for fn_index, block_fn in demo.fns.items():
        positions = {i for i, block in enumerate(block_fn.inputs) if isinstance(block, (gr.File, gr.UploadButton))}
        if positions:
            found[str(fn_index)] = positions
            if block_fn.api_name:
                found[str(block_fn.api_name)] = positions
    return found


def guard_policy(config: Config, demo=None) -> Policy:
    return Policy(port=config.port, configured_host=config.host, max_body_bytes=REQUEST_LIMIT_BYTES,
                  upload_root=gradio_dir(config), file_inputs=file_inputs(demo) if demo is not None else {})


def launch_options(config: Config, policy: Policy | None = None) -> dict:
    """Everything `Blocks.launch` is told; private by default (see the module docstring)."""
    return {
        "server_name": config.host,
        "server_port": config.port,
        "auth": config.auth_pair,
        "share": config.share,
        "enable_monitoring": False,
        "max_file_size": UPLOAD_LIMIT,
        # Gradio passes these to its FastAPI app, so the guard is in the app from its first request.
        "app_kwargs": {"middleware": [Middleware(HostOriginGuard, policy=policy or guard_policy(config))]},
        # Nothing under the data dir is served: not the database, backups, model caches or earlier exports.
        "blocked_paths": blocked_paths(config),
        "allowed_paths": [],
        # Gradio would otherwise keep every call's inputs and outputs (the manuscript) in the browser's storage.
        "run_history": False,
        "mcp_server": False,
        "ssr_mode": False,
        "css": CSS,
        "head": SCRIPT,
        "footer_links": ["gradio", "settings"],
    }


def check_share(config: Config) -> None:
    """`--share` puts the app on a public URL: refused without a login, and refused when Gradio's tunnel program
    is missing (it would be downloaded, and Longhand is offline unless --allow-download)."""
    if not config.share:
        return
    if config.auth is None:
        raise LaunchError("--share makes the app reachable by anyone with the link: add --auth user:password.")
    # gradio is imported here, after use_private_gradio_dir, like everywhere else in this module.
    from gradio import tunneling

    if not Path(tunneling.BINARY_PATH).exists() and not config.allow_download:
        raise LaunchError(f"--share needs Gradio's tunnel program {tunneling.BINARY_PATH}, which is not installed "
                          "(offline: nothing is downloaded without --allow-download).")


def launch(config: Config, source: ModelSource, check_only: bool = False) -> int:
    for folder in (config.data_dir, config.backups_dir, config.exports_dir):
        private_dir(folder)
    use_private_gradio_dir(config)
    check_share(config)
    demo = build_app(config, source)
    if check_only:
        print(f"longhand: ok (model {source.name} at {source.location})")
        return 0
    policy = guard_policy(config, demo)
    demo.queue(default_concurrency_limit=4)
    options = {**launch_options(config, policy), "prevent_thread_lock": True}
    if not config.share:
        demo.launch(**options)
    else:
        # Gradio reports a failed tunnel in several lines and serves on regardless; we say it in one and stop.
        with contextlib.redirect_stdout(io.StringIO()):
            demo.launch(**options)
        if not demo.share_url:
            demo.close()
            raise LaunchError("--share could not open a public link (no connection to Gradio's share server); "
                              "nothing is served.")
        policy.add_public_url(demo.share_url)
        print(f"longhand: serving at {demo.local_url} and, with a login, at {demo.share_url}")
    demo.block_thread()
    return 0
