"""What the app calls: `load_generator(source, ...)` gives a `TextGenerator` that renders chats and streams text.

A source is anything with `kind` ("gguf", "folder" or "remote"), `location` (a path or a server URL) and `name`
(app.offline.ModelSource fits; `models/` does not import app/, so `ModelSpec` here is the same shape).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, Union

import torch

from models.backend import State
from models.errors import ModelLoadError
from models.generate import GenerationInfo, generate
from models.loading import LoadReport, load_folder_backend, load_gguf_backend, resolve_device, resolve_dtype
from models.requantize import CHOICES as GGUF_REQUANTIZE, fast_copy
from models.sampling import PenaltyParams, SamplingParams

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}
Prompt = Union[str, Sequence[Message]]
GGUF_BACKENDS = ("auto", "llama.cpp", "transformers")
CHATS_KEPT = 16


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # "gguf", "folder" or "remote"
    location: str
    name: str


class TextGenerator:
    """One loaded model (local backend or remote server) with the operations the writing engine needs."""

    def __init__(self, backend, load_report: LoadReport | None = None) -> None:
        self._backend = backend
        self.load_report = load_report
        self._history_text = ""
        self._history_ids: list[int] = []
        self._history_lock = threading.Lock()
        self._chats: dict[str, list] = {}  # remote only: rendered transcript -> the messages it came from

    @property
    def backend(self):
        return self._backend

    @property
    def name(self) -> str:
        return self._backend.name

    @property
    def supports_state(self) -> bool:
        return self._backend.supports_state

    @property
    def context_window(self) -> int:
        return self._backend.context_window

    def count_tokens(self, text: str) -> int:
        return len(self._backend.encode(text))

    def render_chat(self, messages: Sequence[Message]) -> str:
        """The prompt text for `messages`, through the model's chat template when it has one."""
        template = getattr(self._backend, "chat_template", None)
        if template and hasattr(self._backend, "render_chat"):
            # llama.cpp: the GGUF's own template, rendered by llama-cpp-python's jinja formatter.
            return self._backend.render_chat(list(messages))
        if template:
            return self._backend.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True
            )
        # No template (a base model): a plain transcript that ends where the assistant's answer starts.
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        transcript = "\n\n".join(lines + ["Assistant:"])
        if not self._backend.supports_state:
            # A server whose template we cannot read: `stream` sends these messages to its chat endpoint instead.
            with self._history_lock:
                self._chats[transcript] = list(messages)
                while len(self._chats) > CHATS_KEPT:
                    self._chats.pop(next(iter(self._chats)))
        return transcript

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """Token ids for a raw prompt string, or for chat messages rendered through the template."""
        text = prompt if isinstance(prompt, str) else self.render_chat(prompt)
        return self._backend.encode(text)

    def _penalty_history_ids(self, text: str) -> list[int]:
        # The manuscript only grows between steps: re-encode just what was added since the last call.
        with self._history_lock:
            if self._history_text and text.startswith(self._history_text):
                added = text[len(self._history_text):]
                ids = self._history_ids + (self._backend.encode(added) if added else [])
            else:
                ids = self._backend.encode(text)
            self._history_text, self._history_ids = text, ids
            return list(ids)

    def stream(
        self,
        messages_or_prompt: Prompt,
        *,
        sampling: SamplingParams | None = None,
        penalties: PenaltyParams | None = None,
        max_new_tokens: int = 256,
        stop: Sequence[str] = (),
        cancel: threading.Event | None = None,
        penalty_history: str = "",
        state: State | None = None,
        info: GenerationInfo | None = None,
    ) -> Iterator[str]:
        """Stream the continuation. Chat messages go through the chat template; a string is used as it is.

        `penalty_history` is the manuscript the penalties look at (with the new tokens); empty means the prompt.
        `state` (local models only) is what the model has read before the prompt; it is advanced in place.
        """
        if not self._backend.supports_state:
            if state is not None:
                raise ValueError(f"{self.name} is a remote model: it keeps no state to continue from")
            messages_or_prompt, prefix = self._as_chat(messages_or_prompt)
            if prefix:
                yield from _without_prefix(self._backend.stream(
                    messages_or_prompt, sampling=sampling, penalties=penalties, max_new_tokens=max_new_tokens,
                    stop=stop, cancel=cancel, info=info), prefix)
                return
            yield from self._backend.stream(
                messages_or_prompt, sampling=sampling, penalties=penalties, max_new_tokens=max_new_tokens,
                stop=stop, cancel=cancel, info=info,
            )
            return
        history = self._penalty_history_ids(penalty_history) if penalty_history else None
        yield from generate(
            self._backend, self.prompt_ids(messages_or_prompt), sampling=sampling, penalties=penalties,
            max_new_tokens=max_new_tokens, stop=stop, cancel=cancel, state=state, penalty_history_ids=history,
            info=info,
        )

    def _as_chat(self, prompt: Prompt) -> tuple[Prompt, str]:
        """A transcript `render_chat` made for a remote server (plus an answer prefix such as the plans' "1.")
        becomes its messages again, the prefix asked for in the last one: the chat endpoint applies the server's
        own template, where `/v1/completions` would apply none. Returns (prompt, prefix to strip from the answer)."""
        if not isinstance(prompt, str):
            return prompt, ""
        with self._history_lock:
            found = next(((t, m) for t, m in self._chats.items() if prompt.startswith(t)), None)
        if found is None:
            return prompt, ""
        transcript, messages = found
        prefix = prompt[len(transcript):].strip()
        if not prefix:
            return messages, ""
        last = dict(messages[-1])
        last["content"] = f"{last['content']}\n\nStart your answer with \"{prefix}\"."
        return messages[:-1] + [last], prefix

    def complete(self, messages_or_prompt: Prompt, **kwargs) -> str:
        """The whole continuation as one string (`stream` joined)."""
        return "".join(self.stream(messages_or_prompt, **kwargs))

    def read(self, state: State, text: str) -> int:
        """Advance `state` over `text` (local models); return how many tokens were read."""
        ids = self._backend.encode(text)
        if ids:
            self._backend.prefill(state, ids)
        return len(ids)


def load_generator(
    source,
    *,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: str | Path,
    trust_remote_code: bool = False,
    threads: int | None = None,
    gguf_backend: str = "auto",
    gguf_requantize: str = "auto",
) -> TextGenerator:
    """Load `source` (kind, location, name) or raise `ModelLoadError` with one line saying what to do.

    `threads` sets torch's CPU thread count for the process (on a machine shared with other busy processes one
    thread can decode many times faster than OpenMP's default, which spins waiting for cores it cannot get).
    `gguf_backend` ("auto", "llama.cpp" or "transformers") says how a .gguf runs: "auto" takes llama.cpp on the
    CPU when llama-cpp-python is installed and falls back to transformers with a one-line notice
    (`load_report.notice`) when it is not. `gguf_requantize` "auto" lets llama.cpp read a Q4_1 or Q5_1 file
    through a Q8_0 copy made once in `cache_dir` (models/requantize.py; `load_report.note` says so); "off" loads
    the file as it is.
    """
    kind, location, name = source.kind, str(source.location), source.name
    if threads is not None:
        if threads < 1:
            raise ModelLoadError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    if kind == "remote":
        from models.remote import RemoteBackend

        return TextGenerator(RemoteBackend(location, name=name))
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    report = LoadReport(source_path=location, loaded_from=location)
    if kind == "gguf" and _use_llamacpp(gguf_backend, torch_device, report):
        from models.llamacpp_backend import load_llamacpp_backend
        from models.loading import _identity

        started = time.perf_counter()
        threads = threads or _llamacpp_threads()
        path = _llamacpp_file(Path(location), requantize=gguf_requantize, cache_dir=Path(cache_dir), threads=threads,
                              report=report)
        backend = load_llamacpp_backend(path, name=name, threads=threads, identity=_identity(path))
        report.seconds, report.backend = time.perf_counter() - started, "llama.cpp"
    elif kind == "gguf":
        backend = load_gguf_backend(
            Path(location), name=name, device=torch_device, dtype=torch_dtype, cache_dir=Path(cache_dir),
            report=report,
        )
    elif kind == "folder":
        from models import mamba2

        started = time.perf_counter()
        if mamba2.supports(location):
            # Mamba2 and Bamba checkpoints run on the native runtime: our kernels, decode captured in a CUDA graph.
            backend = mamba2.load_native_backend(Path(location), name=name, device=torch_device, dtype=torch_dtype)
        else:
            backend = load_folder_backend(
                Path(location), name=name, device=torch_device, dtype=torch_dtype,
                trust_remote_code=trust_remote_code,
            )
        report.seconds = time.perf_counter() - started
    else:
        raise ModelLoadError(f"Unknown model kind {kind!r}: expected gguf, folder or remote.")
    return TextGenerator(backend, report)


def _without_prefix(pieces: Iterator[str], prefix: str) -> Iterator[str]:
    """The streamed answer without the `prefix` it was asked to start with (the caller puts the prefix back)."""
    head = ""
    for piece in pieces:
        if head is None:
            yield piece
            continue
        head += piece
        if len(head.lstrip()) < len(prefix) and prefix.startswith(head.lstrip()):
            continue  # could still be the prefix
        text = head.lstrip()
        yield " " + (text[len(prefix):].lstrip() if text.startswith(prefix) else text)
        head = None
    if head:
        yield head


def _llamacpp_threads(cpuinfo: str | None = None) -> int:
    """One thread per physical core this process may use, as llama.cpp's own tools default to.

    Measured on a 2-core machine without hyperthreads (bench/results/llamacpp.json, proxy step, load 0.4-1.4):
    2 threads 6.1 s a step, 1 thread 9.1 s. A second thread on the same physical core (a hyperthread) only
    competes for that core's vector units, and threads that spin-wait for each other collapse when other work
    holds the cores (two threads decoded 20x slower than one on that machine under the load of other test runs):
    a busy shared machine should pass `threads=1`. Half the logical CPUs when /proc/cpuinfo does not say."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    cores = _physical_cores(cpuinfo)
    if cores is None:
        return max(1, allowed // 2)
    return max(1, min(cores, allowed))


def _physical_cores(cpuinfo: str | None = None) -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; None where there is no such file or field."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    cores = set()
    for block in cpuinfo.strip().split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {key.strip(): value.strip() for key, value in fields.items()}
        if "core id" in fields:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return len(cores) or None


def _llamacpp_file(path: Path, *, requantize: str, cache_dir: Path, threads: int, report: LoadReport) -> Path:
    """The GGUF llama.cpp loads: `path`, or its fast copy (models/requantize.py) when `requantize` is "auto"."""
    if requantize not in GGUF_REQUANTIZE:
        raise ModelLoadError(f"Unknown GGUF requantize choice {requantize!r}: use one of {', '.join(GGUF_REQUANTIZE)}.")
    if requantize == "off" or not path.is_file():
        return path
    loaded, note = fast_copy(path, cache_dir=cache_dir, threads=threads)
    report.loaded_from, report.note = str(loaded), note
    if note:
        print(f"longhand: {note}", file=sys.stderr)
    return loaded


def _use_llamacpp(choice: str, device: torch.device, report: LoadReport) -> bool:
    """Whether a GGUF runs through llama.cpp; when "auto" cannot, `report.notice` says why in one line."""
    if choice not in GGUF_BACKENDS:
        raise ModelLoadError(f"Unknown GGUF backend {choice!r}: use one of {', '.join(GGUF_BACKENDS)}.")
    if choice == "transformers":
        return False
    from models.llamacpp_backend import available

    problem = available()
    if choice == "llama.cpp":
        if problem:
            raise ModelLoadError(f"{problem}: install it (`make setup` compiles it) or pass --gguf-backend "
                                 "transformers.")
        return True
    if device.type != "cpu":
        return False  # the installed llama-cpp-python is a CPU build; transformers runs the GGUF on the GPU
    if problem:
        report.notice = f"{problem}; running the GGUF through transformers instead (slower)."
        print(f"longhand: {report.notice}", file=sys.stderr)
        return False
    return True
