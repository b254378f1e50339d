"""`python -m app serve`: serve the Gradio app (the default command)."""

from __future__ import annotations

import argparse
import sys

from app.config import Config

HELP = "serve the writing app in the browser (default command)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true",
                        help="resolve the model and embedder, build the app, and exit without serving")


def run(config: Config, args: argparse.Namespace) -> int:
    from app.offline import default_embedder_path, resolve_model

    source = resolve_model(config.model, config.models_dir, config.allow_download)
    if config.embedder == "default":
        default_embedder_path()
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"longhand: warning: listening on {config.host}: anyone who can reach this address can use the app"
              + ("" if config.auth else " (pass --auth user:password to require a login)"), file=sys.stderr)
    from app.cli import UserError
    from app.ui import LaunchError, launch

    try:
        return launch(config, source, check_only=args.check)
    except LaunchError as exc:
        raise UserError(str(exc)) from None
