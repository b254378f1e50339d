"""The llama.cpp backend (models/llamacpp_backend.py): the real default GGUF, and tiny random recurrent (Mamba2) and
hybrid (Bamba) GGUFs that these tests convert themselves with the converter shipped in llama.cpp's source.

The tiny models are the transformers configurations of tests/models/conftest.py with SmolLM2's vocabulary (the
converter refuses the byte-level test tokenizer: "BPE pre-tokenizer was not recognized"); the tokenizer is read from
the default GGUF. Converting takes minutes on a loaded 2-core machine, so the files are cached under
~/.cache/longhand-tests, keyed by the llama-cpp-python version and the recipe below.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from app.engine.core import Engine
from app.engine.context import MANUSCRIPT_STATE, PROMPT_ONLY
from models.backend import Backend
from models.errors import Cancelled
from models.generate import GenerationInfo, generate
from models.sampling import PenaltyParams, SamplingParams
from models.snapshots import SnapshotPolicy, invalidate_from, paragraph_ids, read_manuscript
from tests.conftest import require_or_skip
from tests.models.conftest import DictSnapshotStore

llama_cpp = pytest.importorskip("llama_cpp")
from models.llamacpp_backend import LlamaCppBackend  # noqa: E402

pytestmark = pytest.mark.slow
# Restored and re-read states are bitwise the same in practice (0.0 measured); the bound leaves room for a build
# whose kernels reorder a sum, far below the 1e-1 and more that one missing token changes.
TOLERANCE = 1e-4
PARAGRAPHS = ["The lighthouse stood on the cliff above the harbour.", "Waves broke below it all night long.",
              "At dawn the keeper climbed the stairs again.", "She wrote the ships' names in her book."]
PROBE = "Then"
RECIPE = "v1: mamba2 h64 L2 s16 heads8; bamba h64 L3 attn[1]; seed 0; f32; SmolLM2 vocab"
FAMILIES = ["mamba2", "bamba"]


def _version() -> str:
    return importlib.metadata.version("llama-cpp-python")


def _cache_root() -> Path:
    key = hashlib.sha256(f"{_version()}|{RECIPE}".encode()).hexdigest()[:12]
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "longhand-tests" / f"tiny-gguf-{key}"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _converter(root: Path) -> Path:
    """llama.cpp's source folder from the llama-cpp-python sdist of the installed version (downloaded once)."""
    source = root / "llama.cpp"
    if (source / "convert_hf_to_gguf.py").is_file():
        return source
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                           f"llama-cpp-python=={_version()}", "-d", str(root)], capture_output=True, text=True)
    require_or_skip(done.returncode == 0, f"could not download the llama-cpp-python sdist: {done.stderr[-300:]}")
    archive = next(root.glob("llama_cpp_python-*.tar.gz"))
    prefix = f"{archive.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (
            m.name.endswith("convert_hf_to_gguf.py") or "/conversion/" in m.name or "/gguf-py/" in m.name)]
        for member in members:
            member.name = member.name.removeprefix(prefix)
        tar.extractall(source, members=members, filter="data")
    return source


def _tiny_models(vocab_size: int) -> dict:
    from transformers import BambaConfig, BambaForCausalLM, Mamba2Config, Mamba2ForCausalLM

    common = {"vocab_size": vocab_size, "eos_token_id": 2, "pad_token_id": 0, "bos_token_id": 1,
              "tie_word_embeddings": True}
    torch.manual_seed(0)
    mamba2 = Mamba2ForCausalLM(Mamba2Config(hidden_size=64, state_size=16, num_heads=8, head_dim=16, expand=2,
                                            n_groups=1, num_hidden_layers=2, conv_kernel=4, chunk_size=16, **common))
    torch.manual_seed(0)
    bamba = BambaForCausalLM(BambaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        attn_layer_indices=[1], mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=16,
        mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=16, max_position_embeddings=4096, **common))
    return {"mamba2": mamba2, "bamba": bamba}


@pytest.fixture(scope="session")
def tiny_ggufs() -> dict[str, Path]:
    root = _cache_root()
    files = {family: root / f"{family}.gguf" for family in FAMILIES}
    if all(path.is_file() for path in files.values()):
        return files
    from transformers import AutoTokenizer

    from app.offline import default_lm_path

    source = _converter(root)
    gguf = default_lm_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    for family, model in _tiny_models(len(tokenizer)).items():
        folder = root / family
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        scratch = files[family].with_suffix(".partial")
        done = subprocess.run(
            [sys.executable, str(source / "convert_hf_to_gguf.py"), str(folder), "--outfile", str(scratch),
             "--outtype", "f32"],
            env={**os.environ, "PYTHONPATH": f"{source}{os.pathsep}{source / 'gguf-py'}"}, capture_output=True,
            text=True)
        assert done.returncode == 0, f"convert_hf_to_gguf.py failed for {family}: {done.stderr[-1500:]}"
        scratch.replace(files[family])
    return files


@pytest.fixture(scope="module")
def tiny(tiny_ggufs) -> dict[str, LlamaCppBackend]:
    return {family: LlamaCppBackend(path, name=f"tiny-{family}", threads=1, identity=f"tiny-{family}")
            for family, path in tiny_ggufs.items()}


@pytest.fixture(scope="module")
def default_llamacpp() -> LlamaCppBackend:
    from app.offline import DEFAULT_LM_NAME, default_lm_path

    return LlamaCppBackend(default_lm_path(), name=DEFAULT_LM_NAME, threads=1, identity="default")


def _reread_logits(backend: LlamaCppBackend, paragraphs: list[str]) -> torch.Tensor:
    state = backend.new_state()
    backend.prefill(state, [t for text in paragraphs for t in paragraph_ids(backend, text)])
    return backend.prefill(state, backend.encode(PROBE))


def _strategy(backend) -> str:
    engine = SimpleNamespace(generator=SimpleNamespace(backend=backend, supports_state=True),
                             snapshot_store=object())
    return Engine.strategy.fget(engine)


# --------------------------------------------------------------------------------------------- tiny GGUFs


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_gets_its_strategy(tiny, default_llamacpp, family):
    backend = tiny[family]
    assert isinstance(backend, Backend)
    assert backend.recurrent == (family == "mamba2") and backend.hybrid == (family == "bamba")
    assert backend.fixed_size_state == (family == "mamba2")
    assert _strategy(backend) == MANUSCRIPT_STATE
    assert not default_llamacpp.recurrent and not default_llamacpp.hybrid
    assert _strategy(default_llamacpp) == PROMPT_ONLY


@pytest.mark.parametrize("family", FAMILIES)
def test_restored_snapshot_gives_the_logits_of_rereading(tiny, tiny_ggufs, family):
    backend = tiny[family]
    store = DictSnapshotStore()
    policy = SnapshotPolicy(budget_bytes=10_000_000)
    read = read_manuscript(backend, store, 1, PARAGRAPHS, policy=policy)
    assert read.saved == [1, 2, 3, 4]
    expected = _reread_logits(backend, PARAGRAPHS)
    # In the same context, after it read other text, and in a second llama.cpp context.
    backend.prefill(backend.new_state(), backend.encode("Something else entirely."))
    other = LlamaCppBackend(tiny_ggufs[family], name="again", threads=1, identity=f"tiny-{family}")
    for reader in (backend, other):
        restored = read_manuscript(reader, store, 1, PARAGRAPHS)
        assert restored.restored_from == 4 and restored.tokens_read == 0
        logits = reader.prefill(restored.state, reader.encode(PROBE))
        assert (logits - expected).abs().max().item() <= TOLERANCE
    sizes = [nbytes for _, nbytes in store.list(1, backend.fingerprint)]
    # Each snapshot also lists the tokens it read (8 bytes each): beyond that a recurrent state does not grow with
    # the text, and the hybrid's KV part does.
    token_bytes = 8 * sum(len(paragraph_ids(backend, text)) for text in PARAGRAPHS[1:])
    if family == "mamba2":
        assert abs(sizes[-1] - sizes[0] - token_bytes) <= 64  # the safetensors header pads to 8 bytes
    else:
        assert sizes == sorted(sizes) and sizes[-1] - sizes[0] > 10 * token_bytes


@pytest.mark.parametrize("family", FAMILIES)
def test_an_edit_rereads_from_the_edited_paragraph_only(tiny, family):
    backend = tiny[family]
    store = DictSnapshotStore()
    read_manuscript(backend, store, 7, PARAGRAPHS, policy=SnapshotPolicy(budget_bytes=10_000_000))
    edited = PARAGRAPHS[:2] + ["At noon the keeper slept instead."] + PARAGRAPHS[3:]
    invalidate_from(store, 7, 3)
    before = backend.reads
    result = read_manuscript(backend, store, 7, edited)
    assert result.restored_from == 2
    assert result.tokens_read == sum(len(paragraph_ids(backend, text)) for text in edited[2:])
    logits = backend.prefill(result.state, backend.encode(PROBE))
    assert backend.reads - before == result.tokens_read + len(backend.encode(PROBE))
    assert (logits - _reread_logits(backend, edited)).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("family", FAMILIES)
def test_a_state_saved_one_token_short_fails_the_check(tiny, family):
    backend = tiny[family]
    ids = [t for text in PARAGRAPHS for t in paragraph_ids(backend, text)]
    short = backend.new_state()
    backend.prefill(short, ids[:-1])
    restored = backend.state_from_bytes(backend.state_to_bytes(short))
    logits = backend.prefill(restored, backend.encode(PROBE))
    assert (logits - _reread_logits(backend, PARAGRAPHS)).abs().max().item() > 100 * TOLERANCE


def test_a_state_from_another_model_is_refused(tiny):
    data = tiny["mamba2"].state_to_bytes(_read(tiny["mamba2"]))
    with pytest.raises(ValueError, match="another model"):
        tiny["bamba"].state_from_bytes(data)


def _read(backend):
    state = backend.new_state()
    backend.prefill(state, backend.encode("One paragraph."))
    return state


# --------------------------------------------------------------------------------------------- the default GGUF

MESSAGES = [{"role": "system", "content": "You are a novelist."},
            {"role": "user", "content": "Write one sentence about a lighthouse keeper."}]


def _prompt(backend) -> list[int]:
    return backend.encode(backend.render_chat(MESSAGES))


def test_the_ggufs_own_chat_template(default_llamacpp):
    text = default_llamacpp.render_chat(MESSAGES)
    assert text == ("<|im_start|>system\nYou are a novelist.<|im_end|>\n<|im_start|>user\nWrite one sentence about "
                    "a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n")
    ids = default_llamacpp.encode(text)
    assert ids[0] == default_llamacpp.llm.tokenize(b"<|im_start|>", add_bos=False, special=True)[0]
    assert default_llamacpp.decode(default_llamacpp.encode("A keeper, a lamp.")) == "A keeper, a lamp."
    assert 2 in default_llamacpp.eos_token_ids  # <|im_end|>


def test_streams_with_stop_strings_seeds_and_cancel(default_llamacpp):
    backend = default_llamacpp
    info = GenerationInfo()
    greedy = list(generate(backend, _prompt(backend), sampling=SamplingParams(temperature=0), max_new_tokens=30,
                           info=info))
    text = "".join(greedy)
    assert len(greedy) >= 5 and "lighthouse" in text.lower()
    word = text.split()[3]
    cut = "".join(generate(backend, _prompt(backend), sampling=SamplingParams(temperature=0), max_new_tokens=30,
                           stop=[word]))
    assert cut == text[: text.index(word)]
    seeded = [("".join(generate(backend, _prompt(backend), sampling=SamplingParams(temperature=1.0, seed=seed),
                                max_new_tokens=20))) for seed in (5, 5, 6)]
    assert seeded[0] == seeded[1] != seeded[2]
    cancel = threading.Event()
    stream = generate(backend, _prompt(backend), sampling=SamplingParams(temperature=0), max_new_tokens=30,
                      cancel=cancel)
    next(stream)
    cancel.set()
    with pytest.raises(Cancelled):
        list(stream)


def test_our_penalties_and_dry_run_on_its_logits(default_llamacpp):
    backend = default_llamacpp
    prompt = backend.encode("the the the the the the the the")
    plain = GenerationInfo()
    list(generate(backend, prompt, sampling=SamplingParams(temperature=0), max_new_tokens=12, info=plain))
    penalized = GenerationInfo()
    list(generate(backend, prompt, sampling=SamplingParams(temperature=0), max_new_tokens=12, info=penalized,
                  penalties=PenaltyParams(repetition=1.5, dry_multiplier=0.8)))
    the = backend.encode(" the")[0]
    assert plain.new_token_ids.count(the) > penalized.new_token_ids.count(the)


def test_prompts_that_share_a_prefix_read_it_once(default_llamacpp):
    backend = default_llamacpp
    shared = backend.encode("The keeper's log, night one. " * 20)
    first, second = backend.encode(" Write the paragraph."), backend.encode(" Write the memory.")
    backend.prefill(backend.new_state(), shared + first)
    before = backend.reads
    logits = backend.prefill(backend.new_state(), shared + second)
    same = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)  # " Write the" is shared too
    assert backend.reads - before == len(second) - same
    fresh = LlamaCppBackend(backend.path, name="fresh", threads=1, identity="default")
    assert (logits - fresh.prefill(fresh.new_state(), shared + second)).abs().max().item() <= 1e-3
