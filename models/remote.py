"""A remote OpenAI-compatible server (vLLM, SGLang, llama.cpp's server, `transformers serve`) as a text generator.

Streams `/v1/completions` for a prompt string and `/v1/chat/completions` for chat messages (the server applies
its own chat template). A server keeps no state we can read, so there are no snapshots. Sampling settings beyond
the OpenAI set (top_k, min_p, repetition_penalty, DRY) are sent when switched on; a strict server that refuses
unknown fields gets the request again without them (remembered for later requests).
A location may name the model after a '#': `http://127.0.0.1:8000/v1#my-model`.

Chat prompts: a server lists no chat template, so when the model id it serves is a local .gguf file or model folder
(what `python -m llama_cpp.server --model PATH` and `transformers serve PATH` report) that model's own template
renders the prompt here and the answer prefix (the plans' "1.") follows it on `/v1/completions`. For any other
server, models/service.py sends the messages to `/v1/chat/completions` (the server applies its template) and asks
for the answer prefix in the last message (`chat_with_prefix`).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Iterator, Sequence

import httpx

from models.errors import Cancelled, GenerationError, ModelLoadError
from models.generate import GenerationInfo, stream_until_stop
from models.sampling import PenaltyParams, SamplingParams

CONNECT_TIMEOUT_S = 10.0
# A token can take long on a loaded server; the read timeout bounds the gap between two streamed chunks.
READ_TIMEOUT_S = 300.0
FALLBACK_CONTEXT = 8192
CHARS_PER_TOKEN = 4


def _served_template(model: str):
    """A function rendering chat messages through the template of the local model the server names, or None."""
    path = Path(model)
    try:
        if path.is_file() and path.suffix == ".gguf":
            return _gguf_template(path)
        if path.is_dir() and (path / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(path))
            if not getattr(tokenizer, "chat_template", None):
                return None
            return lambda messages: tokenizer.apply_chat_template(messages, tokenize=False,
                                                                  add_generation_prompt=True)
    except (OSError, ValueError, ImportError):
        return None  # not a model we can read: the chat endpoint applies the server's template
    return None


def _gguf_template(path: Path):
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)  # metadata only: under a second
    template = vocab.metadata.get("tokenizer.chat_template")
    if not template:
        return None

    def token(name: str) -> str:
        index = vocab.metadata.get(name)
        return vocab.detokenize([int(index)], special=True).decode("utf-8", "replace") if index is not None else ""

    formatter = Jinja2ChatFormatter(template=template, eos_token=token("tokenizer.ggml.eos_token_id"),
                                    bos_token=token("tokenizer.ggml.bos_token_id"), add_generation_prompt=True)
    return lambda messages: formatter(messages=messages).prompt


def _split_location(location: str) -> tuple[str, str | None]:
    url, _, model = location.partition("#")
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ModelLoadError(f"{location!r} is not an http(s) URL of an OpenAI-compatible server.")
    if not url.endswith("/v1"):
        url += "/v1"
    return url, model or None


class RemoteBackend:
    """Text in, streamed text out, over HTTP. No tokenizer: token counts are estimated from characters."""

    supports_state = False
    fixed_size_state = False
    eos_token_ids: list[int] = []

    def __init__(self, location: str, *, name: str, model: str | None = None, api_key: str | None = None) -> None:
        self.base_url, from_location = _split_location(location)
        self.name = name
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S), headers=self._headers
        )
        self.model = model or from_location or self._first_model()
        self.fingerprint = f"remote:{self.base_url}#{self.model}"
        self._template = _served_template(self.model)
        self.chat_template = "served model's own" if self._template is not None else None
        self.context_window = FALLBACK_CONTEXT
        self._send_extensions = True
        self._lock = threading.Lock()

    def _first_model(self) -> str:
        try:
            response = self._client.get(f"{self.base_url}/models", timeout=CONNECT_TIMEOUT_S)
            response.raise_for_status()
            models = response.json().get("data", [])
        except httpx.ConnectError:
            raise ModelLoadError(
                f"No server answers at {self.base_url}: start it, or check the URL and port."
            ) from None
        except (httpx.HTTPError, ValueError):
            models = []
        if not models:
            raise ModelLoadError(
                f"{self.base_url} does not list its models: name one after '#', e.g. {self.base_url}#model-id."
            )
        return str(models[0]["id"])

    # Text --------------------------------------------------------------------------------------------------

    def render_chat(self, messages) -> str:
        """`messages` through the served model's own chat template (only when `chat_template` is set)."""
        if self._template is None:
            raise ValueError(f"{self.base_url} serves {self.model!r}, whose chat template is not known here")
        return self._template(list(messages))

    def encode(self, text: str) -> list[int]:
        # Only used for counting: one pseudo-token per CHARS_PER_TOKEN characters.
        return [0] * ((len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN)

    def decode(self, ids: list[int]) -> str:
        raise GenerationError(f"{self.name} is a remote model: it has no local tokenizer to decode with")

    def _no_state(self, *args, **kwargs):
        raise GenerationError(f"{self.name} is a remote model: it keeps no state to read, save or restore")

    # A remote server exposes no logits or state: these parts of the Backend protocol refuse clearly.
    new_state = prefill = step = clone_state = _no_state
    state_to_bytes = state_from_bytes = state_nbytes = _no_state

    # Generation ---------------------------------------------------------------------------------------------

    def _body(self, prompt, sampling: SamplingParams, penalties: PenaltyParams, max_new_tokens: int,
              stop: Sequence[str]) -> tuple[str, dict]:
        body: dict = {"model": self.model, "stream": True, "max_tokens": max_new_tokens,
                      "temperature": sampling.temperature, "top_p": sampling.top_p}
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if stop:
            body["stop"] = list(stop)[:4]  # the OpenAI API takes at most four
        if penalties.presence:
            body["presence_penalty"] = penalties.presence
        if penalties.frequency:
            body["frequency_penalty"] = penalties.frequency
        if self._send_extensions:
            extensions = {
                "top_k": sampling.top_k or None,
                "min_p": sampling.min_p or None,
                "repetition_penalty": penalties.repetition if penalties.repetition != 1.0 else None,
                "dry_multiplier": penalties.dry_multiplier or None,
            }
            if penalties.dry_active:
                extensions.update(dry_base=penalties.dry_base, dry_allowed_length=penalties.dry_allowed_length,
                                  dry_sequence_breakers=penalties.dry_sequence_breakers)
            body.update({k: v for k, v in extensions.items() if v is not None})
        if isinstance(prompt, str):
            return "completions", {**body, "prompt": prompt}
        return "chat/completions", {**body, "messages": list(prompt)}

    def _open(self, endpoint: str, body: dict) -> httpx.Response:
        request = self._client.build_request("POST", f"{self.base_url}/{endpoint}", json=body)
        try:
            response = self._client.send(request, stream=True)
        except httpx.ConnectError:
            raise GenerationError(f"No server answers at {self.base_url}: start it, or check the URL.") from None
        except httpx.HTTPError as exc:
            raise GenerationError(f"Request to {self.base_url} failed: {type(exc).__name__}") from None
        return response

    def stream(
        self,
        prompt,
        *,
        sampling: SamplingParams | None = None,
        penalties: PenaltyParams | None = None,
        max_new_tokens: int = 256,
        stop: Sequence[str] = (),
        cancel: threading.Event | None = None,
        info: GenerationInfo | None = None,
    ) -> Iterator[str]:
        sampling = sampling or SamplingParams()
        penalties = penalties or PenaltyParams()
        info = info if info is not None else GenerationInfo()
        info.seed = sampling.seed
        if cancel is not None and cancel.is_set():
            raise Cancelled("generation cancelled")
        endpoint, body = self._body(prompt, sampling, penalties, max_new_tokens, stop)
        response = self._open(endpoint, body)
        if response.status_code in (400, 422) and self._send_extensions:
            detail = response.read().decode(errors="replace")
            response.close()
            # A strict server refused fields it does not know: ask again with the standard OpenAI set only.
            self._send_extensions = False
            endpoint, retry = self._body(prompt, sampling, penalties, max_new_tokens, stop)
            if retry == body:
                raise GenerationError(f"{self.base_url} refused the request: {detail[:200]}")
            response = self._open(endpoint, retry)
        try:
            if response.status_code != 200:
                detail = response.read().decode(errors="replace")
                raise GenerationError(f"{self.base_url} answered {response.status_code}: {detail[:200]}")
            yield from self._read_events(response, endpoint, stop, cancel, info)
        finally:
            response.close()

    def _read_events(self, response: httpx.Response, endpoint: str, stop: Sequence[str],
                     cancel: threading.Event | None, info: GenerationInfo) -> Iterator[str]:
        # Servers apply the stop strings too; filtering here as well keeps the contract when one does not.
        yield from stream_until_stop(self._texts(response, endpoint, cancel, info), stop, info)

    def _texts(self, response: httpx.Response, endpoint: str, cancel: threading.Event | None,
               info: GenerationInfo) -> Iterator[str]:
        """The whole text streamed so far after each piece the server sends."""
        text = ""
        try:
            for line in response.iter_lines():
                if cancel is not None and cancel.is_set():
                    raise Cancelled("generation cancelled")
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    raise GenerationError(f"{self.base_url} reported: {str(event['error'])[:200]}")
                for choice in event.get("choices", []):
                    piece = choice.get("text") if endpoint == "completions" else \
                        (choice.get("delta") or {}).get("content")
                    if piece:
                        text += piece
                        info.new_token_ids.append(0)
                        yield text
                    if choice.get("finish_reason"):
                        info.finish_reason = choice["finish_reason"]
        except httpx.HTTPError as exc:
            raise GenerationError(f"The stream from {self.base_url} broke: {type(exc).__name__}") from None
