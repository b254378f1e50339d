"""Everything persistent about a novel: the SQLAlchemy schema and store, retrieval, import/export and backups.

`memory/` imports neither `models/` nor `kernels/`; model paths (the embedder's folder) are passed in by `app/`.
"""
