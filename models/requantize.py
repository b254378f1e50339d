"""A Q8_0 copy of a GGUF whose weights llama.cpp has no fast CPU matrix multiply for, made once in the models cache.

llama.cpp reads a prompt through tiled matrix multiplies (llamafile's tinyBLAS) for F32, F16, BF16, Q8_0, Q4_0,
Q5_0 and IQ4_NL weights; Q4_1 and Q5_1 go through one dot product per row, which made the default model's prefill
3.4x slower than torch's fp32 GEMM on the same file (bench/results/llamacpp_steps_whole.json). Q8_0 holds every Q4_1
or Q5_1 weight to within 1/254 of its block's largest magnitude, far inside their own quantization step, so the copy
is the same model read faster (tests/models/test_requantize.py measures how close; bench/llamacpp_steps.py how fast).

`fast_copy(path, cache_dir=...)` returns the file to load and a one-line note: the copy (made now or found from
before), or the file itself when its weights are fast already, the copy would be larger than `MAX_COPY_BYTES`, or it
cannot be made (the note says why; nothing half-written is left: the copy is written beside its name, then renamed).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# --gguf-requantize: "auto" makes and loads the copy when it helps, "off" loads every file as it is.
CHOICES = ("auto", "off")
# Weight types llama.cpp multiplies one row at a time on a CPU (no tinyBLAS kernel), and Q8_0 holds exactly enough.
SLOW_ON_CPU = frozenset({"Q4_1", "Q5_1"})
TARGET = "Q8_0"
# llama.cpp's LLAMA_FTYPE_MOSTLY_* numbers (general.file_type) of the types this module needs to name.
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 32: "BF16"}
BITS_PER_WEIGHT = {"Q4_1": 5.0, "Q5_1": 6.0, "Q8_0": 8.5}
# A copy is a second file on the writer's disk: above this it is not made without asking (the note says how).
MAX_COPY_BYTES = 2 << 30


def weight_type(path: Path) -> str:
    """The file's declared weight type (its `general.file_type`, e.g. "Q4_1"; "" when it declares none), read by
    llama.cpp from the header alone (a vocab-only load: about 0.1 s, where gguf.GGUFReader parses every token)."""
    import ctypes

    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    with suppress_stdout_stderr(disable=False):
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise OSError(f"llama.cpp could not read the header of {Path(path).name}")
    try:
        value = ctypes.create_string_buffer(64)
        if llama_cpp.llama_model_meta_val_str(model, b"general.file_type", value, len(value)) < 0:
            return ""
    finally:
        llama_cpp.llama_model_free(model)
    return FILE_TYPES.get(int(value.value or -1), "")


def copy_path(path: Path, *, cache_dir: Path) -> Path:
    """Where the Q8_0 copy of `path` lives: named after the file, its size and its modification time, so a changed
    file gets a new copy rather than a stale one."""
    stat = Path(path).stat()
    key = hashlib.sha256(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return Path(cache_dir) / "gguf-q8_0" / f"{Path(path).stem}.{key}.{TARGET}.gguf"


def fast_copy(path: Path, *, cache_dir: Path, threads: int = 1,
              max_bytes: int = MAX_COPY_BYTES) -> tuple[Path, str]:
    """(the file llama.cpp should load, a one-line note for the load report; "" when the file is loaded as is)."""
    path = Path(path)
    try:
        kind = weight_type(path)
    except OSError:
        return path, ""  # not a GGUF llama.cpp can read: loading it says so, with the file's name
    if kind not in SLOW_ON_CPU:
        return path, ""
    target = copy_path(path, cache_dir=cache_dir)
    reason = (f"llama.cpp has no fast CPU matrix multiply for {kind}, so it reads prompts through a {TARGET} copy "
              f"of {path.name}")
    if target.is_file():
        return target, f"{reason} ({_megabytes(target.stat().st_size)}, made before in {target.parent})."
    estimate = int(path.stat().st_size * BITS_PER_WEIGHT[TARGET] / BITS_PER_WEIGHT[kind])
    if estimate > max_bytes:
        return path, (f"{path.name} is {kind}, which llama.cpp reads slowly on a CPU; a {TARGET} copy would take about "
                      f"{_megabytes(estimate)}, so none was made: convert it once with llama.cpp's llama-quantize "
                      f"(--allow-requantize ... {TARGET}) and load that file for faster prompts.")
    try:
        _quantize(source=path, target=target, threads=threads)
    except (OSError, RuntimeError) as exc:
        return path, f"No {TARGET} copy of {path.name} could be made ({exc}); reading it as it is (slower prompts)."
    return target, f"{reason} ({_megabytes(target.stat().st_size)}, made once in {target.parent})."


def _quantize(*, source: Path, target: Path, threads: int) -> None:
    """llama.cpp's own quantizer (llama_model_quantize, what llama-quantize runs), into `target` atomically."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.allow_requantize = True  # the source is quantized already; Q8_0 is finer than it
    params.nthread = max(1, int(threads))
    try:
        with suppress_stdout_stderr(disable=False):
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params)
        if status != 0 or not partial.is_file():
            raise RuntimeError(f"llama_model_quantize returned {status}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.0f} MB"
