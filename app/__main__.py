"""Entry point: `python -m app [COMMAND] [FLAGS]`. See app/cli.py for the commands and app/config.py for the flags.

One "Next step" click, from button to database (the wiring behind it: app/wiring.py open_parts()):
  app/ui/write.py        next_step() -> _run(): one engine call, engine.step(novel_id, plan), its events streamed
                         into the draft box (app/ui/services.py holds the one engine; app/ui/common.py cleans input)
  app/engine/core.py     Engine.step(): _read() -> app/engine/reading.py StoreReader.read() reads the novel,
                         its settings (app/engine/settings.py), manuscript, memory and plans in one transaction;
                         _for_novel() gets the novel's model from app/wiring.py ModelService.generator()
                         (app/config.py check_model_allowed refuses a server this launch does not allow; the model
                         loads on first use); _step() builds the context (StoreReader.step_inputs(),
                         memory/retrieval.py search(), app/engine/context.py build_context()) and renders
                         prompts/*.txt (app/engine/prompts.py; the three prompts open alike, for prefix reuse);
                         _write_versions() has app/engine/stages.py ModelStages.paragraph() stream each version of
                         the paragraph (the novel's "versions per step"; continuity.py guards each try),
                         _memory_and_plans() run memory() (it folds in the paragraphs the writer wrote or changed
                         since the memory's last update, which read() found) and plans() (app/engine/parsing.py
                         checks each answer), then _finish() -> _commit() saves the first StepDraft; the other
                         versions are kept beside it (memory/alternatives.py attach_to_revision(), in the step's
                         revision). The writer's own edits go through app/engine/editing.py instead.
  app/engine/events.py   status_line(event): the one status line the UI, the CLI and the benchmarks show
  models/service.py      TextGenerator.stream() -> models/generate.py generate(): penalties, sampling, cancel; its
                         stream_until_stop() holds back stop strings (for remote servers too: models/remote.py)
  memory/store.py        commit_step(): paragraph, memory, plans and embedding in one transaction, each write a
                         revision (memory/revisions.py record(); the vector: memory/embeddings.py put_embedding())
                         (memory/connection.py: BEGIN IMMEDIATE on SQLite)
"""

import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main())
