"""Longhand's application layer: configuration, the CLI (`python -m app`), the writing engine and the Gradio UI.

`app/` may import every other package of ours (`memory/`, `models/`, `kernels/`); nothing imports `app/`.
"""
