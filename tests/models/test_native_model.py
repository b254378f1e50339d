"""The native Mamba2 / Bamba model against transformers' own implementation, and the checkpoint loader's checks."""

import functools
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import models.mamba2.model as native_model
from models.mamba2 import CheckpointError, ConfigError, Mamba2Config, load_model, read_config
from models.mamba2.random_checkpoint import save_random_checkpoint

FAMILIES = ["mamba2", "bamba"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPT_LEN = 37  # not a multiple of the tiny configs' chunk of 16


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {family: save_random_checkpoint(family, tmp_path_factory.mktemp(family), seed=1) for family in FAMILIES}


def _hf_model(folder, family):
    from transformers import BambaForCausalLM, Mamba2ForCausalLM

    cls = {"mamba2": Mamba2ForCausalLM, "bamba": BambaForCausalLM}[family]
    return cls.from_pretrained(str(folder), dtype=torch.float32).eval()


def _prompt(seed=0, length=PROMPT_LEN):
    return torch.randint(1, 320, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_logits_match_transformers(checkpoints, family):
    hf = _hf_model(checkpoints[family], family)
    ours = load_model(checkpoints[family])
    ids = _prompt()
    with torch.no_grad():
        expected = hf(ids).logits  # [1, L, V]
        whole = ours(ids)
        # Read in two pieces: the second starts from the state the first left (conv, SSM and attention caches).
        state = ours.allocate_state(1, max_seq_len=64)
        pieces = torch.cat([ours(ids[:, :21], state), ours(ids[:, 21:], state)], dim=1)
    assert state.length == PROMPT_LEN
    torch.testing.assert_close(whole, expected, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(pieces, expected, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_steps_match_transformers_logits(checkpoints, family):
    hf = _hf_model(checkpoints[family], family)
    ours = load_model(checkpoints[family])
    ids = _prompt(seed=2)
    with torch.no_grad():
        expected = hf(ids).logits[0]  # [L, V]
        state = ours.allocate_state(1, max_seq_len=64)
        ours(ids[:, :20], state)
        steps = [ours.decode_step(ids[:, t], state, torch.tensor([t])) for t in range(20, PROMPT_LEN)]
    torch.testing.assert_close(torch.cat(steps), expected[20:], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_64_tokens_match_transformers_generate(checkpoints, family):
    hf = _hf_model(checkpoints[family], family)
    ours = load_model(checkpoints[family])
    ids = _prompt(seed=3, length=12)
    with torch.no_grad():
        out = hf.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False, eos_token_id=None,
                          pad_token_id=0)
        expected = out[0, ids.shape[1]:].tolist()
        state = ours.allocate_state(1, max_seq_len=128)
        token = ours(ids, state, last_only=True).argmax(-1)  # [1]
        tokens = [int(token)]
        for _ in range(63):
            logits = ours.decode_step(token, state, torch.tensor([state.length]))
            state.length += 1
            token = logits.argmax(-1)
            tokens.append(int(token))
    assert len(expected) == 64
    assert tokens == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_triton_kernels_in_interpreter_match_reference_path(checkpoints, family, monkeypatch):
    ours = load_model(checkpoints[family])
    ids = _prompt(seed=4, length=19)

    def prefill_then_step():
        state = ours.allocate_state(1, max_seq_len=32)
        prefill = ours(ids[:, :18], state)  # [1, 18, V]
        step = ours.decode_step(ids[:, 18], state, torch.tensor([18]))  # [1, V]
        return torch.cat([prefill, step[:, None]], dim=1)

    with torch.no_grad():
        reference = prefill_then_step()
        for name in ("causal_conv1d", "causal_conv1d_update", "gated_rms_norm", "ssd_chunk_scan", "ssd_state_step"):
            monkeypatch.setattr(native_model, name, functools.partial(getattr(native_model, name), force_triton=True))
        triton = prefill_then_step()
    torch.testing.assert_close(triton, reference, atol=1e-4, rtol=1e-4)


def _rewrite(folder, change):
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("family", FAMILIES)
def test_wrong_key_names_the_key(tmp_path, family):
    folder = save_random_checkpoint(family, tmp_path / "ckpt", tokenizer=False)
    layer = "backbone.layers.1.mixer" if family == "mamba2" else "model.layers.2.mamba"
    _rewrite(folder, lambda t: t.__setitem__(f"{layer}.A_logs", t.pop(f"{layer}.A_log")))
    with pytest.raises(CheckpointError, match=rf"'{layer}\.A_logs'"):
        load_model(folder)


@pytest.mark.parametrize("family", FAMILIES)
def test_wrong_shape_names_the_key(tmp_path, family):
    folder = save_random_checkpoint(family, tmp_path / "ckpt", tokenizer=False)
    key = "backbone.layers.0.mixer.in_proj.weight" if family == "mamba2" else "model.layers.1.self_attn.k_proj.weight"
    _rewrite(folder, lambda t: t.__setitem__(key, t[key][:-1].clone()))
    with pytest.raises(CheckpointError, match=rf"'{key}' .*has shape"):
        load_model(folder)


def test_missing_key_names_the_key(tmp_path):
    folder = save_random_checkpoint("mamba2", tmp_path / "ckpt", tokenizer=False)
    _rewrite(folder, lambda t: t.pop("backbone.norm_f.weight"))
    with pytest.raises(CheckpointError, match=r"missing key 'backbone.norm_f.weight'"):
        load_model(folder)


def test_tied_checkpoint_without_lm_head_loads(tmp_path):
    folder = save_random_checkpoint("mamba2", tmp_path / "ckpt", tokenizer=False, tie_word_embeddings=True)
    ours = load_model(folder)
    assert ours.lm_head is None
    ids = _prompt(length=5)
    expected = _hf_model(folder, "mamba2")(ids).logits
    torch.testing.assert_close(ours(ids).detach(), expected.detach(), atol=2e-4, rtol=1e-4)


def test_unsupported_architecture_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    with pytest.raises(ConfigError, match="LlamaForCausalLM"):
        read_config(tmp_path)


def test_hybrid_layout_is_an_explicit_list(checkpoints):
    config = read_config(checkpoints["bamba"])
    assert config.layer_types == ["mamba", "attention", "mamba", "attention"]
    assert config.attention_layers == [1, 3] and config.mamba_layers == [0, 2]
    assert config.rotary_dim == config.attention_head_dim // 2  # Bamba rotates half of each head
    assert config.time_step_limit == (0.0, math.inf)


def test_presets_derive_the_published_sizes():
    small, large = Mamba2Config.from_preset("mamba2-130m"), Mamba2Config.from_preset("mamba2-2.7b")
    assert (small.n_heads, small.d_inner, small.conv_dim) == (24, 1536, 1792)
    assert (large.n_heads, large.in_proj_size) == (80, 2 * 5120 + 2 * 128 + 80)
    # The published names give the parameter counts to within a few percent.
    assert 125e6 < small.n_params() < 135e6
    assert 2.6e9 < large.n_params() < 2.8e9
    with pytest.raises(ConfigError, match="layer_types"):
        Mamba2Config(n_layers=3, layer_types=["mamba", "attention"])


def test_config_json_written_by_older_converters_reads(tmp_path):
    # Older conversions write a bare Infinity (valid for Python's json) and omit the defaults.
    (tmp_path / "config.json").write_text(
        '{"architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2", "vocab_size": 50288, "hidden_size": 768,'
        ' "num_hidden_layers": 24, "num_heads": 24, "head_dim": 64, "n_groups": 1, "state_size": 128,'
        ' "time_step_limit": [0.0, Infinity], "tie_word_embeddings": true, "eos_token_id": 0}'
    )
    config = read_config(tmp_path)
    preset = Mamba2Config.from_preset("mamba2-130m")
    assert (config.n_heads, config.conv_dim, config.in_proj_size) == (preset.n_heads, preset.conv_dim,
                                                                      preset.in_proj_size)
    assert config.time_step_limit == (0.0, math.inf) and config.tie_embeddings and config.eos_token_ids == [0]
