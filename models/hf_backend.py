"""The transformers backend: any causal LM transformers 5 can build, its state being the model's own cache.

transformers 5.24+ keeps every model's memory in one `DynamicCache` made of per-layer objects, passed to `forward`
as `cache=` (`past_key_values=` and `cache_params=` warn and go away in 5.40): attention layers (`DynamicLayer`,
`DynamicSlidingWindowLayer`) hold keys/values that grow with the text, Mamba2-family layers
(`LinearAttentionLayer`) hold conv and recurrent states of fixed size, and hybrid layers
(`LinearAttentionAndFullAttentionLayer`) hold both. `TransformersState` wraps that cache plus the number of tokens
read; this module serializes it layer by layer to safetensors (never pickle) and back.

Prefix reuse (issue 16): a model whose every cache layer is a plain `DynamicLayer` (full attention only) keeps the
state it advanced last. A fresh state's first prompt that starts with the same tokens starts from a copy of that
cache cropped to the common prefix (`copy.deepcopy`, then `DynamicCache.crop(-n)`), so one step's prompts read
their shared start once, as llama.cpp does with its context. `reads` counts every token the model actually reads.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import json
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from models.backend import common_prefix
from models.state_io import pack, unpack

STATE_FORMAT = "longhand-hf-cache/1"
# Long prompts are read in chunks so an attention model's activations stay bounded.
PREFILL_CHUNK = 512
# Models with no position limit (pure recurrent ones) report this as their context window.
UNBOUNDED_CONTEXT = 1 << 30
# Below this many shared tokens a prompt is read whole: copying the whole previous cache costs about as much as
# reading a few tokens (SmolLM2-135M fp32: 46 kB of keys and values per token, prefill ~200 tokens/s on a core).
MIN_REUSED_TOKENS = 16


@dataclass
class TransformersState:
    cache: object  # transformers.DynamicCache
    length: int = 0  # tokens read so far
    # The tokens read, in order, when every one went through this backend's `prefill`/`step` (a restored state
    # knows only its length): what prefix reuse compares.
    tokens: list[int] = field(default_factory=list)


class EmptyStateError(RuntimeError):
    """A state that has read tokens but whose cache yields no tensors: saving it would write an empty snapshot."""


class _CacheClasses(NamedTuple):
    cache: type  # DynamicCache
    attention_layer: type  # CacheLayerMixin: keys/values
    linear_layer: type  # LinearAttentionCacheLayerMixin: conv and recurrent states
    dynamic_layer: type  # DynamicLayer: full attention, croppable


@functools.cache
def _cache_classes() -> _CacheClasses:
    # Imported on first use: models.loading imports this module at start-up and keeps transformers off that path.
    from transformers import DynamicCache
    from transformers.cache_utils import CacheLayerMixin, DynamicLayer, LinearAttentionCacheLayerMixin

    return _CacheClasses(cache=DynamicCache, attention_layer=CacheLayerMixin,
                         linear_layer=LinearAttentionCacheLayerMixin, dynamic_layer=DynamicLayer)


def _linear_layer(layer) -> bool:
    return isinstance(layer, _cache_classes().linear_layer)


def _attention_layer(layer) -> bool:
    # A hybrid layer is both a linear one and an attention one; a DummyLayer (no cache) is neither.
    return isinstance(layer, _cache_classes().attention_layer)


def _layer_types(cache) -> str:
    """`DynamicCache[LinearAttentionLayer x2, DynamicLayer x1]`: what an error about this cache should name."""
    counts: dict[str, int] = {}
    for layer in getattr(cache, "layers", []):
        counts[type(layer).__name__] = counts.get(type(layer).__name__, 0) + 1
    layers = ", ".join(f"{name} x{count}" for name, count in counts.items()) or "no layers"
    return f"{type(cache).__name__}[{layers}]"


class TransformersBackend:
    """A transformers causal LM plus its tokenizer, on one device in one dtype."""

    supports_state = True

    def __init__(self, model, tokenizer, *, name: str, identity: str) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.config = model.config
        self.fingerprint = hashlib.sha256(f"{identity}|{self.dtype}".encode()).hexdigest()[:16]
        params = inspect.signature(model.forward).parameters
        # `cache` since transformers 5.24; a model that has not moved yet still names it `past_key_values`.
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keeps_last_logits = "logits_to_keep" in params
        probe = self.new_state().cache
        layers = list(getattr(probe, "layers", []))
        # Fixed-size only when no layer keeps keys/values (which grow with the text).
        self.fixed_size_state = bool(layers) and not any(_attention_layer(layer) for layer in layers)
        text_config = self.config.get_text_config(decoder=True)
        window = getattr(text_config, "max_position_embeddings", None) or getattr(text_config, "n_positions", None)
        self.context_window = int(window) if window and not self.fixed_size_state else UNBOUNDED_CONTEXT
        self.eos_token_ids = self._eos_ids()
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        # Only plain full-attention layers can be cut back to a prefix and read on from there.
        self.reuses_prefix = bool(layers) and all(type(layer) is _cache_classes().dynamic_layer for layer in layers)
        self._recent: TransformersState | None = None  # the state advanced last (prefix reuse starts from it)
        self.reads = 0  # tokens read by the model since load

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        for source in (self.config, getattr(self.model, "generation_config", None), self.tokenizer):
            value = getattr(source, "eos_token_id", None) if source is not None else None
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return sorted(ids)

    # Text ---------------------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    # Reading --------------------------------------------------------------------------------------------------

    def new_state(self) -> TransformersState:
        return TransformersState(_cache_classes().cache(config=self.config), 0)

    @torch.inference_mode()
    def _forward(self, state: TransformersState, ids: list[int]) -> torch.Tensor:
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)  # [1, L]
        kwargs = {"input_ids": input_ids, self._cache_arg: state.cache, "use_cache": True}
        if self._keeps_last_logits:
            kwargs["logits_to_keep"] = 1
        out = self.model(**kwargs)
        state.length += len(ids)
        state.tokens.extend(ids)
        self.reads += len(ids)
        self._recent = state
        return out.logits[0, -1].float()  # [V]

    def _reuse_prefix(self, state: TransformersState, ids: list[int]) -> int:
        """Start the fresh `state` from the recent state's cache cut back to the prefix it shares with `ids` (at
        most all but the last token: its logits are needed); return how many tokens of `ids` that covers."""
        recent = self._recent
        if (not self.reuses_prefix or state.length or recent is None or recent is state
                or len(recent.tokens) != recent.length):
            return 0
        common = min(common_prefix(recent.tokens, ids), len(ids) - 1)
        if common < MIN_REUSED_TOKENS:
            return 0
        cache = copy.deepcopy(recent.cache)
        cache.crop(common - recent.length)  # a negative count: the tokens to drop from the end
        state.cache, state.length, state.tokens = cache, common, list(ids[:common])
        return common

    def prefill(self, state: TransformersState, ids: list[int]) -> torch.Tensor:
        if not ids:
            raise ValueError("prefill needs at least one token")
        ids = [int(i) for i in ids]
        start = self._reuse_prefix(state, ids)
        logits = None
        for begin in range(start, len(ids), PREFILL_CHUNK):
            logits = self._forward(state, ids[begin:begin + PREFILL_CHUNK])
        return logits

    def step(self, state: TransformersState, token_id: int) -> torch.Tensor:
        return self._forward(state, [int(token_id)])

    # State --------------------------------------------------------------------------------------------------

    def clone_state(self, state: TransformersState) -> TransformersState:
        return TransformersState(copy.deepcopy(state.cache), state.length, list(state.tokens))

    def _tensors(self, state: TransformersState) -> dict[str, torch.Tensor]:
        """Every tensor the cache holds, by `layer.kind[.slot]` name; an error if a state that read text has none."""
        tensors: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(state.cache.layers):
            if _linear_layer(layer):
                for s in range(layer.number_of_states):
                    if layer.is_conv_states_initialized[s]:
                        tensors[f"{i}.conv.{s}"] = layer.conv_states[s]
                    if layer.is_recurrent_states_initialized[s]:
                        tensors[f"{i}.recurrent.{s}"] = layer.recurrent_states[s]
            if _attention_layer(layer) and layer.is_initialized and layer.keys is not None and layer.keys.numel():
                tensors[f"{i}.keys"] = layer.keys
                tensors[f"{i}.values"] = layer.values
        if state.length and not tensors:
            # The symptom of a transformers release whose cache layers this module does not know: saving would
            # write a snapshot that restores to an empty memory.
            raise EmptyStateError(
                f"the state has read {state.length} tokens but its cache {_layer_types(state.cache)} holds no "
                "tensors this backend knows how to save: the installed transformers changed its cache layers"
            )
        return tensors

    def state_nbytes(self, state: TransformersState) -> int:
        return sum(t.numel() * t.element_size() for t in self._tensors(state).values())

    def state_to_bytes(self, state: TransformersState, dtype: str = "fp32") -> bytes:
        tensors = self._tensors(state)
        layers = state.cache.layers
        extra = {
            "dtypes": json.dumps({key: str(t.dtype).removeprefix("torch.") for key, t in tensors.items()}),
            "has_previous": json.dumps({
                i: [bool(layer.has_previous_state[s]) for s in range(layer.number_of_states)]
                for i, layer in enumerate(layers) if _linear_layer(layer)
            }),
            "cumulative": json.dumps({
                i: layer.cumulative_length for i, layer in enumerate(layers)
                if isinstance(getattr(layer, "cumulative_length", None), int)
            }),
        }
        return pack(tensors, format=STATE_FORMAT, fingerprint=self.fingerprint, length=state.length, dtype=dtype,
                    extra=extra)

    def state_from_bytes(self, data: bytes) -> TransformersState:
        tensors, meta = unpack(data, format=STATE_FORMAT, fingerprint=self.fingerprint, kind="Longhand")
        length = int(meta["length"])
        if length and not tensors:
            # What the backend wrote under transformers 5.24 before it knew that release's cache: restoring it
            # would continue the novel from an empty memory. A ValueError: snapshot readers then read from scratch.
            raise ValueError(f"this state read {length} tokens but holds no tensors: it cannot be restored")
        dtypes = json.loads(meta["dtypes"])
        has_previous = {int(k): v for k, v in json.loads(meta["has_previous"]).items()}
        cumulative = {int(k): v for k, v in json.loads(meta["cumulative"]).items()}
        state = self.new_state()
        layers = state.cache.layers
        by_layer: dict[int, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            index, _, slot_kind = key.partition(".")
            value = tensor.to(device=self.device, dtype=getattr(torch, dtypes[key]))
            by_layer.setdefault(int(index), {})[slot_kind] = value
        for index, values in by_layer.items():
            _restore_layer(layers[index], values)
        for i, flags in has_previous.items():
            for s, flag in enumerate(flags):
                layers[i].has_previous_state[s] = flag
        for i, value in cumulative.items():
            layers[i].cumulative_length = value
        state.length = length
        return state

    # Scoring ------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def continuation_log_likelihood(self, prefix_ids: list[int], continuation_ids: list[int]) -> float:
        """log P(continuation | prefix), in nats, summed over the continuation's tokens: one forward pass without a
        cache, so no generation state is touched."""
        if not prefix_ids or not continuation_ids:
            raise ValueError("scoring needs a prefix and a continuation of at least one token each")
        ids = torch.tensor([[int(i) for i in prefix_ids] + [int(i) for i in continuation_ids]], dtype=torch.long,
                           device=self.device)  # [1, L]
        logits = self.model(input_ids=ids, use_cache=False).logits[0, len(prefix_ids) - 1:-1].float()  # [C, V]
        targets = torch.tensor(continuation_ids, dtype=torch.long, device=self.device)  # [C]
        return float(torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).sum())


def _restore_layer(layer, values: dict[str, torch.Tensor]) -> None:
    """Fill one fresh cache layer from its saved tensors, through the layer's own lazy initialization, so it sets
    whatever device, dtype and bookkeeping its transformers release keeps; `values` is keyed `keys`, `values`,
    `conv.<slot>` and `recurrent.<slot>`."""
    if "keys" in values:
        layer.lazy_initialization(values["keys"], values["values"])
        layer.keys, layer.values = values["keys"], values["values"]
    for name, value in values.items():
        kind, _, slot = name.partition(".")
        if kind == "conv":
            layer.lazy_initialization(conv_states=value, state_idx=int(slot), conv_kernel_size=value.shape[-1])
            layer.conv_states[int(slot)].copy_(value)
        elif kind == "recurrent":
            layer.lazy_initialization(recurrent_states=value, state_idx=int(slot))
            layer.recurrent_states[int(slot)].copy_(value)
        elif kind not in ("keys", "values"):
            raise ValueError(f"state tensor {name!r} is of no cache layer kind this backend saves")
