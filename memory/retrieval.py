"""Long-term memory: embedding text with a local sentence-transformers model and finding similar paragraphs and lore.

Each paragraph is embedded once, when it is saved or edited (RecurrentGPT re-embedded the whole novel every step);
vectors are stored unit-length with the embedder's name and dimension, so top-k is one matrix-vector product.
The matrix of a novel is cached in memory; when the novel changed, only vectors not cached yet are read again.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from memory.schema import Embedding, LoreEntry, Novel, Paragraph
from memory.store import NotFoundError, Vector

DEFAULT_LORE_SIMILARITY = 0.45


class EmbedderError(RuntimeError):
    """The embedder folder cannot be loaded; one line saying why."""


def _name_from_folder(path: Path) -> str:
    readme = path / "README.md"
    if readme.is_file():
        for line in readme.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("# ") and len(line) < 100:
                return line[2:].strip()
    return path.name


class Embedder:
    """A sentence-transformers model loaded from a local folder (never a hub), on CPU unless told otherwise."""

    def __init__(self, path: str | Path, *, name: str | None = None, device: str = "cpu", batch_size: int = 64):
        path = Path(path)
        if not (path / "config.json").is_file():
            raise EmbedderError(f"{path} is not a sentence-transformers folder (no config.json).")
        from sentence_transformers import SentenceTransformer

        self.path = path
        self.name = name or _name_from_folder(path)
        self.batch_size = batch_size
        self._model = SentenceTransformer(str(path), device=device, local_files_only=True)
        dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(dim())
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dim] float32, each row L2-normalized."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of texts; use vector() for one")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            out = self._model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                     normalize_embeddings=True, show_progress_bar=False)
        return np.ascontiguousarray(out, dtype=np.float32)

    def vector(self, text: str) -> Vector:
        """One text as a `memory.store.Vector`, ready for add_paragraph / commit_step."""
        return Vector(self.name, self.embed([text])[0])


@dataclass
class _Matrix:
    # (embedding_epoch, updated_at) of the novel when loaded: both move on every vector change, and the pair
    # also differs after a restore from a backup puts an older novel row back.
    epoch: tuple
    embedding_ids: np.ndarray  # [N] int64; an embedding id always names the same vector (rows are never updated)
    paragraph_ids: np.ndarray  # [N] int64
    positions: np.ndarray  # [N] int64
    vectors: np.ndarray  # [N, dim] float32


_CACHE: OrderedDict[tuple[str, str, int], _Matrix] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 8
_FETCH_CHUNK = 500


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def _load_matrix(session: Session, novel: Novel, embedder: str, dim: int) -> _Matrix:
    """The novel's paragraph vectors for one embedder. Unchanged since last time: the cached matrix. Only rows
    added (a step): just those are read. Anything else: the (id, position) list is re-read and only vectors not
    cached yet are fetched."""
    key = (novel.uid, embedder, dim)
    epoch = (novel.embedding_epoch, novel.updated_at)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None and cached.epoch == epoch:
            _CACHE.move_to_end(key)
            return cached
    where = (Embedding.novel_id == novel.id, Embedding.embedder == embedder, Embedding.dim == dim)
    if cached is not None:
        appended = _appended(session, cached, where, epoch)
        if appended is not None:
            with _CACHE_LOCK:
                _CACHE[key] = appended
            return appended
    rows = session.execute(
        select(Embedding.id, Embedding.paragraph_id, Paragraph.position)
        .join(Paragraph, Paragraph.id == Embedding.paragraph_id)
        .where(*where).order_by(Embedding.id)
    ).all()
    count = len(rows)
    embedding_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=count)
    vectors = np.empty((count, dim), dtype=np.float32)
    have = np.zeros(count, dtype=bool)
    if cached is not None and cached.embedding_ids.size:
        # Both id lists are sorted: match them with searchsorted.
        where = np.searchsorted(cached.embedding_ids, embedding_ids)
        where = np.minimum(where, cached.embedding_ids.size - 1)
        have = cached.embedding_ids[where] == embedding_ids
        vectors[have] = cached.vectors[where[have]]
    missing = embedding_ids[~have]
    row_of = {int(e): i for i, e in enumerate(embedding_ids)} if missing.size else {}
    for start in range(0, missing.size, _FETCH_CHUNK):
        chunk = [int(e) for e in missing[start:start + _FETCH_CHUNK]]
        for embedding_id, blob in session.execute(select(Embedding.id, Embedding.vector)
                                                  .where(Embedding.id.in_(chunk))):
            vectors[row_of[embedding_id]] = np.frombuffer(blob, dtype="<f4")
    matrix = _Matrix(epoch=epoch, embedding_ids=embedding_ids,
                     paragraph_ids=np.fromiter((r[1] for r in rows), dtype=np.int64, count=count),
                     positions=np.fromiter((r[2] for r in rows), dtype=np.int64, count=count), vectors=vectors)
    with _CACHE_LOCK:
        _CACHE[key] = matrix
        _CACHE.move_to_end(key)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return matrix


def _appended(session: Session, cached: _Matrix, where: tuple, epoch: tuple) -> _Matrix | None:
    """The common case after a step: rows were only added at the end. Checked with aggregates computed inside the
    database (count, id sum, position sum), so no per-row work for the rows already cached; None when anything
    else changed (an edit, a deletion, an undo, paragraphs moved), and the caller re-reads the id list."""
    joined = lambda query: query.join(Paragraph, Paragraph.id == Embedding.paragraph_id).where(*where)  # noqa: E731
    count, id_sum, position_sum = session.execute(joined(select(
        func.count(Embedding.id), func.coalesce(func.sum(Embedding.id), 0),
        func.coalesce(func.sum(Paragraph.position), 0)))).one()
    last_id = int(cached.embedding_ids[-1]) if cached.embedding_ids.size else 0
    new_rows = session.execute(joined(select(Embedding.id, Embedding.paragraph_id, Paragraph.position,
                                             Embedding.vector)).where(Embedding.id > last_id)
                               .order_by(Embedding.id)).all()
    if (int(count) != cached.embedding_ids.size + len(new_rows)
            or int(id_sum) != int(cached.embedding_ids.sum()) + sum(r[0] for r in new_rows)
            or int(position_sum) != int(cached.positions.sum()) + sum(r[2] for r in new_rows)):
        return None
    dim = cached.vectors.shape[1]
    added = np.frombuffer(b"".join(r[3] for r in new_rows), dtype="<f4").reshape(len(new_rows), dim)
    return _Matrix(epoch=epoch,
                   embedding_ids=np.concatenate([cached.embedding_ids, [r[0] for r in new_rows]]).astype(np.int64),
                   paragraph_ids=np.concatenate([cached.paragraph_ids, [r[1] for r in new_rows]]).astype(np.int64),
                   positions=np.concatenate([cached.positions, [r[2] for r in new_rows]]).astype(np.int64),
                   vectors=np.concatenate([cached.vectors, added]))


def _query(query_vector: Vector | np.ndarray, embedder: str | None) -> tuple[np.ndarray, str]:
    if isinstance(query_vector, Vector):
        values, name = query_vector.values, query_vector.embedder
    else:
        values, name = query_vector, embedder
    if name is None:
        raise ValueError("top_k needs the embedder's name: pass a memory.store.Vector or embedder=...")
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(values))
    return (values / norm if norm > 0 else values), name


def top_k(session: Session, novel_id: int, query_vector: Vector | np.ndarray, k: int,
          exclude_positions: Iterable[int] = (), *, embedder: str | None = None) -> list[tuple[Paragraph, float]]:
    """The k paragraphs most similar (cosine) to the query, best first, skipping `exclude_positions`.

    Only vectors made by the same embedder (name and dimension) are compared.
    """
    novel = session.get(Novel, novel_id)
    if novel is None:
        raise NotFoundError(f"No novel with id {novel_id}.")
    query, name = _query(query_vector, embedder)
    matrix = _load_matrix(session, novel, name, int(query.shape[0]))
    if k <= 0 or matrix.vectors.shape[0] == 0:
        return []
    scores = matrix.vectors @ query  # [N]
    excluded = np.fromiter(exclude_positions, dtype=np.int64)
    if excluded.size:
        scores = np.where(np.isin(matrix.positions, excluded), -np.inf, scores)
    n_valid = int(np.isfinite(scores).sum())
    k = min(k, n_valid)
    if k == 0:
        return []
    best = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(scores.shape[0])
    best = best[np.argsort(-scores[best], kind="stable")]
    ids = [int(matrix.paragraph_ids[i]) for i in best]
    found = {p.id: p for p in session.scalars(select(Paragraph).where(Paragraph.id.in_(ids)))}
    return [(found[pid], float(scores[i])) for pid, i in zip(ids, best) if pid in found]


def _key_pattern(key: str) -> re.Pattern[str]:
    # Whole word, case-insensitive, on Unicode word characters; a multi-word key matches across any whitespace.
    body = r"\s+".join(re.escape(part) for part in key.split())
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def key_matches(key: str, text: str) -> bool:
    return bool(key.strip()) and _key_pattern(key).search(text) is not None


def triggered_lore(session: Session, novel_id: int, text: str, query_vector: Vector | None = None, *,
                   similarity_threshold: float = DEFAULT_LORE_SIMILARITY, max_similar: int = 3) -> list[LoreEntry]:
    """Enabled lore entries for this context: always-on ones, those with a key appearing in `text` as a whole word
    (case-insensitive), and up to `max_similar` whose stored vector is at least `similarity_threshold` cosine-close
    to `query_vector`. Order: always-on, then keyed, then by similarity; no duplicates.
    """
    entries = list(session.scalars(select(LoreEntry).where(LoreEntry.novel_id == novel_id,
                                                           LoreEntry.enabled.is_(True)).order_by(LoreEntry.id)))
    chosen: list[LoreEntry] = [e for e in entries if e.always_on]
    chosen += [e for e in entries if not e.always_on and any(key_matches(key, text) for key in e.keys)]
    if query_vector is not None and max_similar > 0:
        query, name = _query(query_vector, None)
        taken = {e.id for e in chosen}
        rest = {e.id: e for e in entries if e.id not in taken}
        if rest:
            rows = session.execute(select(Embedding.lore_entry_id, Embedding.vector).where(
                Embedding.lore_entry_id.in_(list(rest)), Embedding.embedder == name,
                Embedding.dim == int(query.shape[0]))).all()
            scored = sorted(((float(np.frombuffer(r.vector, dtype="<f4") @ query), r.lore_entry_id) for r in rows),
                            reverse=True)
            chosen += [rest[i] for score, i in scored[:max_similar] if score >= similarity_threshold]
    return chosen


def embed_missing(session: Session, novel_id: int, embedder: Embedder, batch: int = 64) -> int:
    """Embed every paragraph and lore entry of a novel that has no vector from this embedder yet (after an import,
    an edit saved without a vector, or switching embedders). Returns how many were embedded."""
    from memory.store import paragraphs_missing_embedding, set_lore_embedding, set_paragraph_embedding

    missing = paragraphs_missing_embedding(session, novel_id, embedder.name)
    for start in range(0, len(missing), batch):
        chunk = missing[start:start + batch]
        for paragraph, values in zip(chunk, embedder.embed([p.text for p in chunk])):
            set_paragraph_embedding(session, paragraph.id, Vector(embedder.name, values))
    have = select(Embedding.lore_entry_id).where(Embedding.novel_id == novel_id, Embedding.embedder == embedder.name,
                                                 Embedding.lore_entry_id.is_not(None))
    lore = list(session.scalars(select(LoreEntry).where(LoreEntry.novel_id == novel_id, LoreEntry.id.not_in(have))))
    for entry, values in zip(lore, embedder.embed([f"{e.name}: {e.body}" for e in lore])):
        set_lore_embedding(session, entry.id, Vector(embedder.name, values))
    return len(missing) + len(lore)
