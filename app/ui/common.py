"""What every tab shares: turning failures into one readable message, checking what the user typed or pasted,
and handlers' results by role name.

`handler` wraps an event function (plain or generator) so any exception reaches the page as a `gr.Error` with one
line, never a traceback (the traceback goes to the server log). `clean_text` rejects empty or oversized input and
removes control characters. A handler that fills several components returns `{role: value}` (`@returns` declares
its roles, the field names of its tab's dataclass), so tests call it without a browser; `bind` turns it into an
event's `fn` and `outputs` returning `{component: value}`, which Gradio fills by component.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import inspect
import logging
import re
import unicodedata

import gradio as gr

log = logging.getLogger("longhand.ui")

# Largest text a single box accepts: a long chapter, far below the 1 MB pastes we refuse.
MAX_TEXT_CHARS = 100_000
MAX_PREMISE_CHARS = 20_000
MAX_SHORT_CHARS = 300
# Tab, newline and carriage return are text; every other C0/C1 control character (and DEL) is not.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


# Event options of everything that runs the model: one generation at a time in the process (one model, and a
# CPU runs one fast or two slowly), with the tab's own status line instead of Gradio's overlay.
GENERATION = {"concurrency_id": "generation", "concurrency_limit": 1, "show_progress": "hidden"}


class InputError(ValueError):
    """The user's input cannot be used; the message says which field and why."""


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:500]


def _is_for_the_user(exc: BaseException) -> bool:
    # Errors of our own packages carry messages written for the user; anything else is a bug.
    module = type(exc).__module__.split(".")[0]
    return isinstance(exc, (InputError, ValueError, LookupError, PermissionError, FileNotFoundError)) \
        or module in ("app", "memory", "models")


def _user_message(exc: BaseException) -> str:
    if _is_for_the_user(exc):
        return one_line(exc)
    return f"Something went wrong ({type(exc).__name__}: {one_line(exc)}). Nothing was saved by this action."


def _log(fn, exc: BaseException) -> None:
    """A refused action is one line in the server log; an unexpected failure keeps its traceback there."""
    if _is_for_the_user(exc):
        log.warning("%s: %s", fn.__name__, one_line(exc))
    else:
        log.exception("handler %s failed", fn.__name__)


def as_gr_error(exc: BaseException) -> gr.Error:
    # duration=None: an error stays on screen until the writer closes it.
    return gr.Error(html.escape(_user_message(exc)), duration=None, print_exception=False)


def handler(fn):
    """Wrap an event handler so that every failure shows in the page as one readable line.

    Gradio decides whether to stream by `inspect.isgeneratorfunction`, so a generator stays a generator.
    """
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except GeneratorExit:
                raise
            except Exception as exc:
                _log(fn, exc)
                raise as_gr_error(exc) from None
        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            _log(fn, exc)
            raise as_gr_error(exc) from None
    return call


def clean_text(value: str | None, field: str, *, required: bool = False, max_chars: int = MAX_TEXT_CHARS) -> str:
    """Normalise line endings, drop control characters, check emptiness and size; raise `InputError` with one line."""
    text = "" if value is None else str(value)
    if len(text) > max_chars:
        size = len(text.encode("utf-8"))
        shown = f"{size / 1_000_000:.1f} MB" if size >= 100_000 else f"{len(text):,} characters"
        raise InputError(f"{field} is too long ({shown}); the limit is {max_chars:,} characters.")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", _CONTROL.sub("", text))
    if required and not text.strip():
        raise InputError(f"{field} is empty: please write something first.")
    return text.strip()


def require_novel(novel_id) -> int:
    if novel_id in (None, ""):
        raise InputError("No novel is open: create or open one in the Library tab.")
    return int(novel_id)


def word_count(text: str) -> int:
    return len(text.split())


def escape(text: str) -> str:
    """Text for a Markdown/HTML component, shown literally (a paragraph may contain `<`, `*` or `#`)."""
    # quote=False: quotes are safe in text, and Gradio would show an escaped apostrophe as "&#x27;".
    escaped = html.escape(text, quote=False)
    return re.sub(r"([\\`*_{}\[\]#+\-!|~>])", r"\\\1", escaped)


# ---------------------------------------------------------------- handlers' results by role name


def returns(*roles: str):
    """Declare the role names a handler's result holds: it returns (or yields) a dict {role: value}, a role being a
    field name of the tab's dataclass (or a shared one such as `novel_id`). `bind` maps roles to components; a key
    the handler did not declare is a bug and raises."""
    def declare(fn):
        def checked(values: dict) -> dict:
            unknown = set(values) - set(roles)
            if unknown:
                raise TypeError(f"{fn.__name__} returned {sorted(unknown)}, which it does not declare in @returns")
            return values

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def stream(*args, **kwargs):
                for values in fn(*args, **kwargs):
                    yield checked(values)
            wrapped = stream
        else:
            @functools.wraps(fn)
            def call(*args, **kwargs):
                return checked(fn(*args, **kwargs))
            wrapped = call
        wrapped.roles = roles
        return wrapped
    return declare


def components(tab, **shared) -> dict:
    """A tab's components by role name (the fields of its dataclass), plus `shared` ones (the open novel's state)."""
    return {**{item.name: getattr(tab, item.name) for item in dataclasses.fields(tab)}, **shared}


def _targets(role: str, by_role: dict) -> list:
    if role not in by_role:
        raise KeyError(f"no component has the role {role!r}")
    target = by_role[role]
    if isinstance(target, dict):
        return list(target.values())
    return list(target) if isinstance(target, list) else [target]


def to_components(values: dict, by_role: dict) -> dict:
    """{role: value} as {component: value}. A role naming several components (a dict of fields, a list of buttons)
    takes a dict with the same keys, or a list as long."""
    found = {}
    for role, value in values.items():
        target = by_role[role]
        if isinstance(target, dict):
            found.update({target[name]: item for name, item in value.items()})
        elif isinstance(target, list):
            if len(value) != len(target):
                raise ValueError(f"{role} has {len(target)} components, the handler gave {len(value)} values")
            found.update(zip(target, value))
        else:
            found[target] = value
    return found


def outputs(fn, by_role: dict) -> list:
    """The components a `@returns` handler may fill: the event's outputs."""
    return [component for role in fn.roles for component in _targets(role, by_role)]


def bind(fn, by_role: dict) -> dict:
    """A `@returns` handler as an event's `fn` and `outputs`: `button.click(inputs=[...], **bind(fn, by_role))`.
    The bound function returns (or yields) {component: value}, which Gradio fills by component."""
    listed = outputs(fn, by_role)
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            for values in fn(*args, **kwargs):
                yield to_components(values, by_role)
        return {"fn": stream, "outputs": listed}

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return to_components(fn(*args, **kwargs), by_role)
    return {"fn": call, "outputs": listed}
