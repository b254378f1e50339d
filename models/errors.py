"""The runtime's errors: each `str()` is one line that says what went wrong and what to do.

`ModelLoadError` for anything that stops a model from loading; `Cancelled` when a generation was stopped on request;
`GenerationError` for a remote server or backend that fails mid-stream.
"""

from __future__ import annotations


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; the message is one line telling the user what to do."""


class Cancelled(Exception):
    """A generation was cancelled between tokens (the caller set its `threading.Event`)."""


class GenerationError(RuntimeError):
    """A generation that failed after it started (for example a remote server that dropped the stream)."""
