"""Entry point: `python -m app [COMMAND] [FLAGS]`. See app/cli.py for the commands and app/config.py for the flags."""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main())
