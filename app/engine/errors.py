"""The engine's own error: a step that could not be done (reading, the model stages and the orchestration all raise
it; `app.engine` exports it)."""


class EngineError(RuntimeError):
    """A step that could not be done; one line saying why and what to try. Nothing was saved."""
