"""Turning weights into a streaming, stateful text generator: backends, sampling, generation and state snapshots.

`models/` may import `kernels/`; it never imports `memory/` or `app/`.

backend.py (the Backend protocol) · sampling.py (settings, logits → penalties → probabilities → token) ·
generate.py (the streaming loop) · hf_backend.py (transformers models, their cache as state) · loading.py (checks,
device/dtype, the GGUF → safetensors cache) · remote.py (OpenAI-compatible servers) · snapshots.py (per-paragraph
state snapshots under a budget) · state_io.py (a state as safetensors bytes) · service.py (TextGenerator and load_generator: what app/ calls) · mamba2/ (the
native Mamba2 and hybrid runtime on our kernels) · scoring.py (log P(continuation | prefix), for retrieval's LM
rerank).
"""
