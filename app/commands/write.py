"""`python -m app write`: run N writing steps headless, on a new novel (from a premise) or an existing one.

Progress goes to stdout, one line per stage; each finished step is committed, so Ctrl-C keeps every finished step.
The flags that change settings (--seed, --max-new-tokens, --mode) are checked by app.engine.settings.NovelSettings
before the model loads; a novel whose stored settings hold bad values is written with the defaults for those, and
the note says which.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from app.config import Config

HELP = "write N steps headless on a new novel (from a premise) or an existing one, printing progress"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--premise", metavar="TEXT_OR_FILE",
                        help="a premise text, or a premise .json file (see data/premises/)")
    source.add_argument("--novel", type=int, metavar="ID", help="continue the existing novel with this id")
    parser.add_argument("--steps", type=int, default=3, help="how many steps to write (default 3; the opening counts)")
    parser.add_argument("--plan", help="the plan for the first step (default: the model chooses, as in auto mode)")
    parser.add_argument("--mode", choices=("write", "interactive"), help="third person, or second person (IF)")
    parser.add_argument("--seed", type=int, help="sampling seed (default: a fresh one each generation)")
    parser.add_argument("--max-new-tokens", type=int, help="token limit of a paragraph (default 250)")
    parser.add_argument("--quiet", action="store_true", help="print only the finished paragraphs")


def _echo(text: str) -> None:
    print(text, flush=True)


def run(config: Config, args: argparse.Namespace) -> int:
    from app.cli import UserError

    if args.steps < 1:
        raise UserError("--steps must be at least 1.")
    from app.engine import Cancelled, EngineError, NovelSettings, SettingsError
    from app.engine.settings import settings_notice
    from app.engine.premises import Premise, PremiseError, create_novel, load_premise
    from app.wiring import open_parts
    from memory import store
    from memory.errors import StoreError
    from models.errors import ModelLoadError

    # Bad input fails at once, before minutes of model loading.
    premise = None
    if args.premise is not None:
        text = args.premise.strip()
        if not text:
            raise UserError("--premise must not be empty.")
        try:
            premise = load_premise(text) if text.endswith(".json") else Premise(id="cli", premise=text)
        except PremiseError as exc:
            raise UserError(str(exc)) from None
    overrides: dict = {}
    if args.seed is not None:
        overrides["sampling"] = {"seed": args.seed}
    if args.max_new_tokens is not None:
        overrides["max_new_tokens"] = args.max_new_tokens
    if args.mode:
        overrides["mode"] = args.mode
    try:
        NovelSettings.from_dict(overrides)
    except SettingsError as exc:
        raise UserError(f"{exc}.") from None
    parts = open_parts(config)
    session_factory, embedder = parts.session_factory, parts.embedder()
    started = time.perf_counter()
    try:
        # `--model` writes every novel here (the UI instead follows each novel's settings): loaded up front, so
        # a model that cannot load fails before any step.
        generator = parts.models.generator()
    except ModelLoadError as exc:
        raise UserError(str(exc)) from None
    if not args.quiet:
        _echo(f"model {generator.name} loaded in {time.perf_counter() - started:.1f}s")
    engine = parts.engine(generator)

    try:
        if premise is not None:
            novel_id = create_novel(session_factory, embedder, premise, settings=overrides)
            if not args.quiet:
                _echo(f"novel {novel_id} created")
        else:
            novel_id = args.novel
            with session_factory() as session, session.begin():
                stored, problems = NovelSettings.repaired(store.get_novel(session, novel_id).settings)
                if overrides:
                    # The flags over the novel's own settings (bad stored values were replaced by their defaults,
                    # which are saved with them: say so, the engine will not see them any more).
                    if problems:
                        _echo(f"note: {settings_notice(problems)}")
                    combined = stored.to_dict()
                    combined["sampling"].update(overrides.pop("sampling", {}))
                    settings = NovelSettings.from_dict({**combined, **overrides})
                    store.update_novel_settings(session, novel_id, settings.to_dict())
    except SettingsError as exc:
        raise UserError(f"{exc}.") from None
    except StoreError as exc:
        raise UserError(str(exc)) from None
    if not args.quiet:
        _echo(f"context strategy: {engine.strategy}")

    cancel = threading.Event()
    try:
        remaining = args.steps
        if args.plan:
            _report(engine.step(novel_id, args.plan, cancel=cancel), args.quiet, 1, args.steps, started)
            remaining -= 1
        if remaining:
            _report(engine.auto_write(novel_id, remaining, cancel=cancel), args.quiet, args.steps - remaining + 1,
                    args.steps, started)
    except (EngineError, StoreError) as exc:
        raise UserError(str(exc)) from None
    except Cancelled:
        _echo("stopped; every finished step is saved")
        return 130
    if not args.quiet:
        _echo(f"done: novel {novel_id}, {time.perf_counter() - started:.0f}s")
    return 0


def _report(events, quiet: bool, first: int, total: int, started: float) -> None:
    # app.engine imports torch: kept off `--help`, like the imports in `run`.
    from app.engine.events import status_line

    step = first
    for event in events:
        stamp = f"[{time.perf_counter() - started:6.0f}s]"
        if event.kind == "done":
            outcome = event.outcome
            if quiet:
                _echo(outcome.paragraph + "\n")
            else:
                _echo(f"{stamp} step {step}/{total}: saved paragraph {outcome.position} "
                      f"({len(outcome.paragraph.split())} words)\n\n{outcome.paragraph}\n\n"
                      f"memory: {outcome.memory}\nplans:\n" + "\n".join(f"  {i}. {p}"
                                                                      for i, p in enumerate(outcome.plans, 1)))
            step += 1
        elif not quiet:
            line = status_line(event)
            if line is not None:
                _echo(f"{stamp} {line}")
    sys.stdout.flush()
