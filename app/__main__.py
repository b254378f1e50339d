"""Entry point: `python -m app [COMMAND] [FLAGS]`. See app/cli.py for the commands and app/config.py for the flags.

One "Next step" click, from button to database:
  app/ui/write.py        next_step() -> _run(): streams the engine's events into the draft box
  app/engine/core.py     Engine.step() -> _step(): builds the context (app/engine/context.py) from the store,
                         renders prompts/*.txt, streams the paragraph, then the memory and plans
  models/service.py      TextGenerator.stream() -> models/generate.py generate(): penalties, sampling, stop, cancel
  memory/store.py        commit_step(): paragraph, memory, plans and embedding in one transaction
"""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main())
