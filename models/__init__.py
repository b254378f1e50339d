"""Turning weights into a streaming, stateful text generator: backends, sampling, generation and state snapshots.

`models/` may import `kernels/`; it never imports `memory/` or `app/`.
"""
