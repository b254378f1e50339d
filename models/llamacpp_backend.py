"""The llama.cpp backend: a `.gguf` file run by llama.cpp (llama-cpp-python), quantized as it is on disk.

It implements the same `Backend` protocol as the transformers one, so the generation loop (models/generate.py)
drives it one token at a time and our own CPU penalty and DRY chain (models/sampling.py) runs on the logits it
returns: streaming, stop strings, cancellation between tokens, seeds and the penalties have exactly the semantics
of the other backends because they are the same code. llama.cpp's own samplers are never used.

llama.cpp keeps one memory (KV cache and/or recurrent state) per context, so a `LlamaCppState` here is the list of
tokens a state has read plus, optionally, a saved sequence state (`llama_state_seq_get_data`) after some prefix of
them. The context is a cache of whichever state was used last: reading into a state whose tokens extend what the
context holds costs only the new tokens; an attention model whose state shares a prefix with the context drops the
rest (`llama_memory_seq_rm`) and reads from there (prefix reuse: one step's three prompts read their shared start
once). Recurrent and hybrid memories cannot be cut back, so `clone_state` saves the sequence state of the state it
copies when that one is in the context, and moving to it later loads that (per-paragraph snapshots use the same
bytes). `reads` counts every token actually evaluated, which the tests and bench/llamacpp.py report.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from models import state_io
from models.backend import common_prefix
from models.errors import ModelLoadError
from models.scoring import SCORING_CONTEXT

STATE_FORMAT = "longhand-llamacpp-seq/1"
# Pure recurrent models have no position limit of their own; llama.cpp still wants a context size.
RECURRENT_CONTEXT = 1 << 17
# An attention model's context defaults to its training length, at most this (KV memory grows with it).
MAX_CONTEXT = 8192
BATCH = 512
SEQ = 0  # the one sequence this backend uses


def available() -> str | None:
    """None when llama-cpp-python imports; else the one-line reason it does not."""
    try:
        import llama_cpp  # noqa: F401
    except Exception as exc:  # a missing or broken build: the caller falls back and says this line
        return f"llama-cpp-python is not usable here ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    return None


@dataclass
class LlamaCppState:
    tokens: list[int] = field(default_factory=list)  # every token this state has read
    saved: bytes | None = None  # llama.cpp sequence state after tokens[:saved_length]
    saved_length: int = 0

    @property
    def length(self) -> int:
        return len(self.tokens)


def _reports_amx() -> bool:
    """Whether the CPU reports AMX tiles. Inside this project's VMs CPUID reports AMX and the kernel grants the
    permission, yet llama.cpp's AMX matmul dies with SIGILL on its first `tilezero`; `make setup` builds without
    AMX (-mno-amx-*), and a build that has it anyway is kept off that path by not using extra buffer types."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return False
    return "amx_tile" in flags


@contextmanager
def _model_params(**overrides):
    """llama_cpp.Llama builds its model parameters from `llama_model_default_params()` and exposes no switch for
    these: while this is open, that function returns the defaults with `overrides` set."""
    import llama_cpp.llama_cpp as lib  # the module llama_cpp.Llama calls it through

    real = lib.llama_model_default_params

    def patched():
        params = real()
        for key, value in overrides.items():
            setattr(params, key, value)
        return params

    lib.llama_model_default_params = patched
    try:
        yield
    finally:
        lib.llama_model_default_params = real


class LlamaCppBackend:
    """One GGUF in one llama.cpp context on the CPU."""

    supports_state = True

    def __init__(self, path: Path, *, name: str, threads: int | None = None, n_ctx: int | None = None,
                 identity: str) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.name = name
        self.path = Path(path)
        threads = threads or 1
        amx = _reports_amx()

        def guard():
            return _model_params(use_extra_bufts=False) if amx else nullcontext()

        try:
            if n_ctx is None:
                # A small first load (the weights are mmapped, so the second one reads them from the page cache)
                # says how long the model's context is and whether it is recurrent.
                with guard():
                    probe = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_batch=256, verbose=False)
                train_ctx = int(llama_cpp.llama_model_n_ctx_train(probe._model.model))
                recurrent = bool(probe._is_recurrent)
                probe.close()
                n_ctx = RECURRENT_CONTEXT if recurrent else min(train_ctx or MAX_CONTEXT, MAX_CONTEXT)
            with guard():
                self.llm = llama_cpp.Llama(
                    model_path=str(path), n_ctx=n_ctx, n_batch=BATCH, n_ubatch=BATCH, n_threads=threads,
                    n_threads_batch=threads, logits_all=False, verbose=False,
                )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"llama.cpp could not load the GGUF file {Path(path).name} ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:200] if str(exc) else ''}).") from None
        self.threads = threads
        self.recurrent = bool(self.llm._is_recurrent)
        self.hybrid = bool(self.llm._is_hybrid)
        # Recurrent and hybrid memories cannot drop a suffix: moving between states goes through saved ones.
        self._can_cut = not (self.recurrent or self.hybrid)
        self.fixed_size_state = self.recurrent
        # Hybrids too get per-paragraph snapshots (app/engine/strategies.py): re-reading a novel is what they
        # cannot avoid otherwise; their size grows with the text, and SnapshotPolicy's budget decides which stay.
        self.snapshot_state = self.recurrent or self.hybrid
        self.context_window = int(self.llm.n_ctx())
        self.vocab_size = int(self.llm.n_vocab())
        self.fingerprint = hashlib.sha256(
            f"{identity}|llama.cpp|{llama_cpp.__version__}".encode()).hexdigest()[:16]
        vocab = llama_cpp.llama_model_get_vocab(self.llm._model.model)
        self.eos_token_ids = sorted(t for t in range(self.vocab_size) if llama_cpp.llama_vocab_is_eog(vocab, t))
        self.metadata = dict(self.llm.metadata)
        self.chat_template = self.metadata.get("tokenizer.chat_template") or None
        self._formatter = None
        self._context: list[int] = []  # the tokens the llama.cpp context holds now
        self._scoring = None  # (context, batch) of scoring's own llama.cpp context, made on first use
        # A step and a Memory tab search may score at once (two Gradio workers): one at a time in that context.
        self._scoring_lock = threading.Lock()
        self.reads = 0  # tokens evaluated since load (what prefix reuse and snapshots save)

    # Text ---------------------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        # special=True: "<|im_start|>" in a rendered chat is the control token, as transformers' tokenizer reads it.
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)) if text else []

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    def render_chat(self, messages) -> str:
        """`messages` through the GGUF's own chat template (`tokenizer.chat_template`), ready for the answer."""
        if self.chat_template is None:
            raise ValueError(f"{self.name} has no chat template")
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            def token_text(key: str) -> str:
                token = self.metadata.get(key)
                return self.decode_special(int(token)) if token is not None else ""

            self._formatter = Jinja2ChatFormatter(
                template=self.chat_template, eos_token=token_text("tokenizer.ggml.eos_token_id"),
                bos_token=token_text("tokenizer.ggml.bos_token_id"), add_generation_prompt=True,
            )
        return self._formatter(messages=list(messages)).prompt

    def decode_special(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    # Reading --------------------------------------------------------------------------------------------------

    def new_state(self) -> LlamaCppState:
        return LlamaCppState()

    def _memory(self):
        return self._lib.llama_get_memory(self.llm._ctx.ctx)

    def _clear(self) -> None:
        self._lib.llama_memory_clear(self._memory(), True)
        self._context = []
        self.llm.n_tokens = 0

    def _seq_bytes(self) -> bytes:
        ctx = self.llm._ctx.ctx
        size = int(self._lib.llama_state_seq_get_size(ctx, SEQ))
        buffer = (ctypes.c_uint8 * size)()
        written = int(self._lib.llama_state_seq_get_data(ctx, buffer, size, SEQ))
        if written <= 0 or written > size:
            raise RuntimeError(f"llama.cpp could not copy the sequence state ({written} of {size} bytes)")
        return bytes(buffer[:written])

    def _load_seq(self, data: bytes, tokens: list[int]) -> None:
        self._clear()
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if int(self._lib.llama_state_seq_set_data(self.llm._ctx.ctx, buffer, len(data), SEQ)) == 0:
            raise ValueError("llama.cpp refused the saved sequence state")
        self._context = list(tokens)
        self.llm.n_tokens = len(tokens)

    def _evaluate(self, ids: list[int]) -> None:
        llm = self.llm
        llm.n_tokens = len(self._context)
        llm.eval(ids)  # appends at n_tokens (after dropping anything past it), in batches of n_batch
        self._context.extend(ids)
        self.reads += len(ids)

    def _make_current(self, state: LlamaCppState) -> None:
        """Bring the context to exactly `state.tokens`, reading as little as it can."""
        common = common_prefix(self._context, state.tokens)
        if common == len(self._context) == len(state.tokens):
            return
        if common < len(self._context):
            if self._can_cut and common > 0:
                if not self._lib.llama_memory_seq_rm(self._memory(), SEQ, common, -1):
                    self._clear()
                else:
                    del self._context[common:]
            elif state.saved is not None and state.saved_length > 0:
                self._load_seq(state.saved, state.tokens[:state.saved_length])
            else:
                self._clear()
        elif state.saved is not None and state.saved_length > len(self._context):
            # The context is a prefix of the state, but a save of a longer prefix is cheaper than reading.
            self._load_seq(state.saved, state.tokens[:state.saved_length])
        rest = state.tokens[len(self._context):]
        if rest:
            self._evaluate(rest)

    def _logits(self) -> torch.Tensor:
        pointer = self._lib.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return torch.from_numpy(np.ctypeslib.as_array(pointer, shape=(self.vocab_size,)).copy())  # [V] fp32

    def prefill(self, state: LlamaCppState, ids: list[int]) -> torch.Tensor:
        if not ids:
            raise ValueError("prefill needs at least one token")
        ids = [int(i) for i in ids]
        if self._can_cut:
            # Attention only: keep whatever start of the context the new text shares (a step's prompts share
            # their long start), drop the rest, read from there; at least one token, for the logits.
            target = state.tokens + ids
            common = min(common_prefix(self._context, target), len(target) - 1)
            if common < len(self._context):
                if common > 0 and self._lib.llama_memory_seq_rm(self._memory(), SEQ, common, -1):
                    del self._context[common:]
                else:
                    self._clear()
            self._evaluate(target[len(self._context):])
        else:
            self._make_current(state)
            self._evaluate(ids)
        state.tokens.extend(ids)
        return self._logits()

    def step(self, state: LlamaCppState, token_id: int) -> torch.Tensor:
        return self.prefill(state, [int(token_id)])

    # State --------------------------------------------------------------------------------------------------

    def _saved_now(self, state: LlamaCppState) -> None:
        """Record the sequence state of `state` while the context holds it (recurrent and hybrid models)."""
        if self._can_cut or state.saved_length == len(state.tokens) or self._context != state.tokens:
            return
        state.saved, state.saved_length = self._seq_bytes(), len(state.tokens)

    def clone_state(self, state: LlamaCppState) -> LlamaCppState:
        self._saved_now(state)
        return LlamaCppState(list(state.tokens), state.saved, state.saved_length)

    def state_nbytes(self, state: LlamaCppState) -> int:
        if state.saved is not None and state.saved_length == len(state.tokens):
            return len(state.saved)
        self._make_current(state)
        return int(self._lib.llama_state_seq_get_size(self.llm._ctx.ctx, SEQ))

    def state_to_bytes(self, state: LlamaCppState, dtype: str = "fp32") -> bytes:
        """The sequence state as llama.cpp writes it (its own tensor types: `dtype` does not apply) with the tokens
        it read, in a safetensors file."""
        if state.saved is None or state.saved_length != len(state.tokens):
            self._make_current(state)
            state.saved, state.saved_length = self._seq_bytes(), len(state.tokens)
        tensors = {
            "sequence": torch.frombuffer(bytearray(state.saved), dtype=torch.uint8),
            "tokens": torch.tensor(state.tokens, dtype=torch.int64),
        }
        meta = {"format": STATE_FORMAT, "fingerprint": self.fingerprint, "length": str(len(state.tokens)),
                "recurrent": json.dumps(self.recurrent), "hybrid": json.dumps(self.hybrid)}
        return st_save(tensors, metadata=meta)

    def state_from_bytes(self, data: bytes) -> LlamaCppState:
        meta = state_io.metadata(data)
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"not a Longhand llama.cpp state (format {meta.get('format')!r})")
        if meta.get("fingerprint") != self.fingerprint:
            raise ValueError("this state was saved by another model or build: it cannot be restored here")
        tensors = st_load(data)
        tokens = [int(t) for t in tensors["tokens"].tolist()]
        if len(tokens) != int(meta["length"]):
            raise ValueError("this state's token count does not match its header: it cannot be restored")
        return LlamaCppState(tokens, tensors["sequence"].numpy().tobytes(), len(tokens))

    # Scoring ------------------------------------------------------------------------------------------------

    def _scoring_context(self):
        """A second llama.cpp context on the same weights (made on first use) that scoring reads in, so the
        generation context and what its prefix reuse holds stay as they were."""
        if self._scoring is None:
            from llama_cpp._internals import LlamaBatch, LlamaContext  # the wrappers llama_cpp.Llama itself uses

            # The generation context's own settings (flash attention off, as llama_cpp.Llama sets it: the
            # library default differs, and moved scores by up to 0.9 nats), only its sizes changed.
            source = self.llm.context_params
            params = type(source).from_buffer_copy(source)
            params.n_ctx = params.n_batch = params.n_ubatch = SCORING_CONTEXT
            params.n_seq_max = 1
            context = LlamaContext(model=self.llm._model, params=params, verbose=False)
            self._scoring = (context, LlamaBatch(n_tokens=SCORING_CONTEXT, embd=0, n_seq_max=1, verbose=False))
        return self._scoring

    def continuation_log_likelihood(self, prefix_ids: list[int], continuation_ids: list[int]) -> float:
        """log P(continuation | prefix), in nats, summed over the continuation's tokens: one batch read in the
        scoring context with logits kept only where they predict a continuation token."""
        ids = [int(i) for i in prefix_ids] + [int(i) for i in continuation_ids]
        if not prefix_ids or not continuation_ids or len(ids) > SCORING_CONTEXT:
            raise ValueError(f"scoring needs a prefix and a continuation of {SCORING_CONTEXT} tokens at most together, "
                             f"got {len(prefix_ids)} + {len(continuation_ids)}")
        first = len(prefix_ids) - 1  # the position whose logits predict the first continuation token
        with self._scoring_lock:
            context, batch = self._scoring_context()
            self._lib.llama_memory_clear(context.memory, True)
            raw = batch.batch
            raw.n_tokens = len(ids)
            for i, token in enumerate(ids):
                raw.token[i], raw.pos[i], raw.n_seq_id[i], raw.logits[i] = token, i, 1, first <= i < len(ids) - 1
                raw.seq_id[i][0] = 0
            context.decode(batch)
            rows = [np.ctypeslib.as_array(self._lib.llama_get_logits_ith(context.ctx, first + offset),
                                          shape=(self.vocab_size,)).astype(np.float64)  # [V]
                    for offset in range(len(continuation_ids))]
        total = 0.0
        for logits, token in zip(rows, continuation_ids):
            peak = logits.max()
            total += float(logits[int(token)] - peak - np.log(np.exp(logits - peak).sum()))
        return total


def load_llamacpp_backend(path: Path, *, name: str, threads: int | None, identity: str) -> LlamaCppBackend:
    if not path.is_file():
        raise ModelLoadError(f"No GGUF file at {path}: pass an existing .gguf file or a model folder.")
    return LlamaCppBackend(path, name=name, threads=threads, identity=identity)
