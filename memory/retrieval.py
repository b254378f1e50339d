"""Long-term memory: embedding text with a local sentence-transformers model and finding similar paragraphs and lore.

Each paragraph is embedded once, when it is saved or edited (RecurrentGPT re-embedded the whole novel every step);
vectors are stored unit-length with the embedder's name and dimension, so top-k is one matrix-vector product.
The matrix of a novel is cached in memory; when the novel changed (a step, an edit, an undo), the rows it kept are
copied, only the new ones are read and computed, and the novel-wide values are recomputed from them (_matrix_from).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Session

from memory.embeddings import (
    Vector,
    embeddings_missing_sentences,
    paragraphs_missing_embedding,
    set_lore_embedding,
    set_paragraph_embedding,
    set_sentence_vectors,
)
from memory.errors import NotFoundError, StoreError
from memory.schema import PARAGRAPH_FTS_TABLE, TSVECTOR_CONFIG, Embedding, LoreEntry, Novel, Paragraph

DEFAULT_LORE_SIMILARITY = 0.45

# A sentence: from a non-space character to the first run of . ! ? or … (with closing quotes or brackets) that is
# followed by whitespace and a capital or digit (an opening quote allowed), or by the end; text without such an
# ending is one sentence. '"Fine!" she said.' stays whole; an initial ("A. Smith") splits, which costs nothing.
_SENTENCE = re.compile(r"\S.*?(?:[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s+[\"'\u201c\u2018(\[]?[A-Z0-9\u00c0-\u00de])"
                       r"|$)", re.DOTALL)


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of the sentences of `text`, in order (the rows of a sentence matrix)."""
    return [(m.start(), m.start() + len(m.group().rstrip())) for m in _SENTENCE.finditer(text) if m.group().strip()]


# Sentence vectors are kept for a paragraph's first this-many sentences: a pasted 1 MB paragraph (some 28,000
# sentences) would otherwise take minutes of embedding on two cores. Its later sentences are still found through
# the paragraph vector and the full-text index; a hit in it is shown without its best sentence.
MAX_PASSAGE_SENTENCES = 256


def sentence_texts(text: str) -> list[str]:
    return [text[start:end] for start, end in split_sentences(text)]


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
        """One text as a `memory.embeddings.Vector` (a query, a lore entry); for a paragraph use passage()."""
        return Vector(self.name, self.embed([text])[0])

    def passage(self, text: str) -> Vector:
        """A paragraph's vector and one per sentence, embedded in one batch, ready for add_paragraph /
        edit_paragraph / commit_step."""
        sentences = sentence_texts(text)[:MAX_PASSAGE_SENTENCES]
        if len(sentences) <= 1:
            values = self.embed([text])
            return Vector(self.name, values[0], sentences=values if sentences else None)
        values = self.embed([text, *sentences])
        return Vector(self.name, values[0], sentences=values[1:])


_WINDOW_CHUNK = 65_536  # sentence rows per step when computing window norms and squares
_HUB_CHUNK = 8_192  # sentence rows per step when computing hubness ([chunk, HUB_REFERENCE] cosines: 16 MB)


@dataclass
class _Centering:
    """What cosine after subtracting the novel's mean vector needs, computed once per cached matrix, so a query
    costs no extra matmul: (s - mu) . (q - mu) = s.q - s.mu - (q.mu - |mu|^2), with s.mu and |s - mu| stored."""

    sentence_mean: np.ndarray  # [dim] float32: the mean of the novel's sentence vectors
    sentence_offsets: np.ndarray  # [M] float32: s . mean
    sentence_norms: np.ndarray  # [M] float32: |s - mean|
    window_norms: np.ndarray  # [M] float32: |(s_i - mean) + (s_next - mean)|
    paragraph_mean: np.ndarray  # [dim] float32: the mean of the paragraph vectors
    paragraph_offsets: np.ndarray  # [N] float32: p . paragraph_mean
    paragraph_norms: np.ndarray  # [N] float32: |p - paragraph_mean|
    # [M] float32: how alike each sentence is to the rest of the novel (HUB_NEIGHBOURS, HUB_REFERENCE), or None
    # above HUB_MAX_SENTENCES, where it is not computed and not used.
    sentence_hubness: np.ndarray | None = None


@dataclass
class _Matrix:
    """A novel's vectors for one embedder, in embedding id order, with what every query needs precomputed.

    Made by _matrix_from: the rows kept from the previous matrix are copied as they were (with the values that
    depend on nothing but the row: squares, window norms), the new ones are computed, then what depends on the
    whole novel (the means, the centred offsets and norms, hubness) is recomputed from those (_centering)."""

    # (embedding_epoch, updated_at) of the novel when loaded: both move on every vector change, and the pair
    # also differs after a restore from a backup puts an older novel row back.
    epoch: tuple
    embedding_ids: np.ndarray  # [N] int64, ascending; an embedding id always names the same vector
    paragraph_ids: np.ndarray  # [N] int64
    positions: np.ndarray  # [N] int64
    vectors: np.ndarray  # [N, dim] float32
    paragraph_squares: np.ndarray  # [N] float64: |p|^2
    sentences: np.ndarray  # [M, dim] float32: every row's sentences, concatenated in row order
    sentence_counts: np.ndarray  # [N] int64; 0 for a row without sentence vectors (not made yet)
    sentence_squares: np.ndarray  # [M] float64: |s|^2
    window_norms: np.ndarray  # [M] float32: |s_i + s_next|, so cos(q, window) needs no matmul
    sentence_starts: np.ndarray = field(init=False)  # [N] int64: where row i's sentences start in `sentences`
    rows_with_sentences: np.ndarray = field(init=False)  # [N'] int64: the rows that have sentence vectors
    window_next: np.ndarray = field(init=False)  # [M] int64: the next sentence of the same paragraph, else itself
    centering: _Centering = field(init=False)  # the novel's mean directions, for scores that leave them out
    projection: _Projection | None = field(init=False)  # made by _projection() when the two-stage search runs

    def __post_init__(self) -> None:
        counts = self.sentence_counts
        self.sentence_starts = _starts(counts)
        self.rows_with_sentences = np.flatnonzero(counts > 0)
        self.window_next = _window_next(self.sentence_starts, counts, self.sentences.shape[0])
        self.centering = _centering(self)
        self.projection = None


def _starts(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if counts.size \
        else np.zeros(0, dtype=np.int64)


def _window_next(starts: np.ndarray, counts: np.ndarray, total: int) -> np.ndarray:
    """[M] each sentence's next one in the same paragraph, the last one itself."""
    last = np.zeros(total, dtype=bool)
    last[(starts + counts - 1)[counts > 0]] = True
    return np.where(last, np.arange(total), np.arange(total) + 1)


def _mean(values: np.ndarray) -> np.ndarray:
    return (values.mean(axis=0) if values.shape[0] else np.zeros(values.shape[1])).astype(np.float32)


def _squares(values: np.ndarray) -> np.ndarray:
    """[rows] |v|^2 in float64, row by row (the same for a row whatever else is computed with it)."""
    out = np.empty(values.shape[0], dtype=np.float64)
    for start in range(0, values.shape[0], _WINDOW_CHUNK):
        chunk = values[start:start + _WINDOW_CHUNK].astype(np.float64)
        out[start:start + chunk.shape[0]] = np.einsum("ij,ij->i", chunk, chunk)
    return out


def _window_norms(sentences: np.ndarray, window_next: np.ndarray) -> np.ndarray:
    """[M] |s_i + s_next| of sentences whose next ones are `window_next` (indices into the same array)."""
    out = np.empty(sentences.shape[0], dtype=np.float32)
    # In chunks: the sum of a whole novel's pairs would be a second copy of the matrix (768 MB at 100k).
    for start in range(0, sentences.shape[0], _WINDOW_CHUNK):
        chunk = slice(start, min(start + _WINDOW_CHUNK, sentences.shape[0]))
        pairs = (sentences[chunk] + sentences[window_next[chunk]]).astype(np.float64)
        out[chunk] = np.sqrt(np.einsum("ij,ij->i", pairs, pairs))
    return out


def _centering(matrix: _Matrix) -> _Centering:
    """The novel-wide part of a matrix, from its rows and row values: the means and one matrix-vector product per
    kind of vector for the offsets (both passes over the matrix in row order, so a matrix updated incrementally
    gets the very values a full rebuild gets), the centred norms from the squares (|s - mu|^2 = |s|^2 - 2 s.mu +
    |mu|^2, no centred copy of the matrix), and hubness up to HUB_MAX_SENTENCES."""
    total = matrix.sentences.shape[0]
    sentence_mean = _mean(matrix.sentences)
    offsets = (matrix.sentences @ sentence_mean if total else np.zeros(0, dtype=np.float32)).astype(np.float32)
    mean_square = float(sentence_mean.astype(np.float64) @ sentence_mean.astype(np.float64))
    wide = offsets.astype(np.float64)
    norms = np.sqrt(np.maximum(matrix.sentence_squares - 2 * wide + mean_square, 0.0)).astype(np.float32)
    # (s_i + s_next) - 2 mu: |w|^2 - 4 (s_i + s_next).mu + 4 |mu|^2.
    windows = matrix.window_norms.astype(np.float64) ** 2 - 4 * (wide + wide[matrix.window_next]) + 4 * mean_square
    paragraph_mean = _mean(matrix.vectors)
    paragraph_offsets = (matrix.vectors @ paragraph_mean).astype(np.float32)
    paragraph_square = float(paragraph_mean.astype(np.float64) @ paragraph_mean.astype(np.float64))
    paragraph_norms = np.sqrt(np.maximum(matrix.paragraph_squares - 2 * paragraph_offsets.astype(np.float64)
                                         + paragraph_square, 0.0)).astype(np.float32)
    return _Centering(
        sentence_mean=sentence_mean, sentence_offsets=offsets, sentence_norms=norms,
        window_norms=np.sqrt(np.maximum(windows, 0.0)).astype(np.float32), paragraph_mean=paragraph_mean,
        paragraph_offsets=paragraph_offsets, paragraph_norms=paragraph_norms,
        sentence_hubness=_hubness(matrix.sentences, sentence_mean, norms) if total <= HUB_MAX_SENTENCES else None)


@dataclass
class _NewRows:
    """Rows read from the database for a matrix: their vectors and sentence vectors (None: not made yet)."""

    vectors: np.ndarray  # [F, dim] float32
    sentences: list  # F of [S, dim] float32 or None


def _empty_matrix(dim: int) -> _Matrix:
    return _Matrix(epoch=(), embedding_ids=np.zeros(0, dtype=np.int64), paragraph_ids=np.zeros(0, dtype=np.int64),
                   positions=np.zeros(0, dtype=np.int64), vectors=np.zeros((0, dim), dtype=np.float32),
                   paragraph_squares=np.zeros(0), sentences=np.zeros((0, dim), dtype=np.float32),
                   sentence_counts=np.zeros(0, dtype=np.int64), sentence_squares=np.zeros(0),
                   window_norms=np.zeros(0, dtype=np.float32))


def _runs(source: np.ndarray) -> list[tuple[int, int, int]]:
    """(first new row, first source row, length) of each stretch of consecutive rows taken from consecutive rows
    of one source (`source`: the source row of each new row, fetched rows offset past the cached ones)."""
    if source.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(source) != 1) + 1
    firsts = np.concatenate([[0], breaks])
    lengths = np.diff(np.concatenate([firsts, [source.size]]))
    return [(int(f), int(source[f]), int(n)) for f, n in zip(firsts, lengths)]


def _matrix_from(cached: _Matrix, epoch: tuple, embedding_ids: np.ndarray, paragraph_ids: np.ndarray,
                 positions: np.ndarray, kept: np.ndarray, new: _NewRows) -> _Matrix:
    """The matrix of rows `embedding_ids` (ascending): row i is the cached matrix's row kept[i] when that is
    >= 0, else the next of `new`'s rows, in order. Kept rows' vectors, sentences and row values are copied (a few
    slice copies, one per unchanged stretch); only the new rows' values are computed. So an edit costs a copy of
    the matrix and the novel-wide recomputation (_centering), never re-reading or recomputing the rows it kept."""
    dim = cached.vectors.shape[1]
    fresh = kept < 0
    present = [s for s in new.sentences if s is not None]
    new_sentences = np.concatenate(present) if present else np.zeros((0, dim), dtype=np.float32)
    new_counts = np.fromiter((0 if s is None else s.shape[0] for s in new.sentences), dtype=np.int64,
                             count=len(new.sentences))
    new_next = _window_next(_starts(new_counts), new_counts, new_sentences.shape[0])
    added = _matrix_parts(new.vectors, new_counts, new_sentences, _squares(new.vectors), _squares(new_sentences),
                          _window_norms(new_sentences, new_next))
    old = _matrix_parts(cached.vectors, cached.sentence_counts, cached.sentences, cached.paragraph_squares,
                        cached.sentence_squares, cached.window_norms)
    # New rows numbered from one past the cached ones, so no stretch runs from a cached row into a new one.
    offset = cached.vectors.shape[0] + 1
    source = np.where(fresh, offset + np.cumsum(fresh) - 1, kept).astype(np.int64)
    runs = _runs(source)
    if len(runs) == 1 and runs[0][1] == offset and runs[0][2] == new.vectors.shape[0]:
        parts = added  # everything new, in order (a first load): no copy
    elif len(runs) == 1 and runs[0][1] == 0 and runs[0][2] == offset - 1:
        parts = old  # the same rows (only positions moved)
    else:
        parts = _copy_runs(runs, offset, old, added, kept, new_counts)
    return _Matrix(epoch=epoch, embedding_ids=embedding_ids, paragraph_ids=paragraph_ids, positions=positions,
                   vectors=parts["vectors"], paragraph_squares=parts["paragraph_squares"],
                   sentences=parts["sentences"], sentence_counts=parts["counts"],
                   sentence_squares=parts["sentence_squares"], window_norms=parts["window_norms"])


def _matrix_parts(vectors, counts, sentences, paragraph_squares, sentence_squares, window_norms) -> dict:
    return {"vectors": vectors, "counts": counts, "sentences": sentences, "paragraph_squares": paragraph_squares,
            "sentence_squares": sentence_squares, "window_norms": window_norms,
            "starts": _starts(counts)}


def _copy_runs(runs: list[tuple[int, int, int]], offset: int, old: dict, added: dict, kept: np.ndarray,
               new_counts: np.ndarray) -> dict:
    """The rows of `runs` gathered from the cached (`old`) and the new (`added`) parts into fresh arrays."""
    counts = np.where(kept >= 0, old["counts"][np.maximum(kept, 0)], 0)
    counts[kept < 0] = new_counts
    starts = _starts(counts)
    total = int(counts.sum())
    dim = old["vectors"].shape[1]
    out = {"vectors": np.empty((kept.size, dim), dtype=np.float32), "counts": counts,
           "sentences": np.empty((total, dim), dtype=np.float32), "paragraph_squares": np.empty(kept.size),
           "sentence_squares": np.empty(total), "window_norms": np.empty(total, dtype=np.float32)}
    for first, source_first, length in runs:
        part, row = (added, source_first - offset) if source_first >= offset else (old, source_first)
        for name in ("vectors", "paragraph_squares"):
            out[name][first:first + length] = part[name][row:row + length]
        start = int(part["starts"][row])
        stop = int(part["starts"][row + length - 1] + part["counts"][row + length - 1])
        target = int(starts[first])
        for name in ("sentences", "sentence_squares", "window_norms"):
            out[name][target:target + stop - start] = part[name][start:stop]
    return out


def _hubness(sentences: np.ndarray, mean: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """[M] per sentence, the mean centred cosine to its HUB_NEIGHBOURS closest sentences among HUB_REFERENCE of the
    novel's sentences (evenly spaced rows; a sentence is never its own neighbour)."""
    total = sentences.shape[0]
    out = np.zeros(total, dtype=np.float32)
    if total <= HUB_NEIGHBOURS:
        return out
    reference_rows = np.unique(np.linspace(0, total - 1, num=min(HUB_REFERENCE, total)).astype(np.int64))
    reference = (sentences[reference_rows] - mean) / np.maximum(norms[reference_rows], 1e-6)[:, None]  # [R, dim]
    neighbours = min(HUB_NEIGHBOURS, reference_rows.size - 1)
    for start in range(0, total, _HUB_CHUNK):
        chunk = slice(start, min(start + _HUB_CHUNK, total))
        rows = (sentences[chunk] - mean) / np.maximum(norms[chunk], 1e-6)[:, None]
        cosines = rows @ reference.T  # [chunk, R]
        own = np.searchsorted(reference_rows, np.arange(chunk.start, chunk.stop))
        own = np.minimum(own, reference_rows.size - 1)
        is_own = reference_rows[own] == np.arange(chunk.start, chunk.stop)
        cosines[np.flatnonzero(is_own), own[is_own]] = -np.inf
        out[chunk] = np.partition(cosines, -neighbours, axis=1)[:, -neighbours:].mean(axis=1)
    return out


@dataclass
class _Projection:
    """The first stage of the two-stage search: each paragraph's centred unit vector projected on the novel's top
    PROJECTION_DIM principal directions, so picking candidates reads a third of the paragraph matrix."""

    basis: np.ndarray  # [dim, r] float32: orthonormal columns
    projected: np.ndarray  # [N, r] float32: ((p - paragraph_mean) / |p - paragraph_mean|) @ basis


def _projection(matrix: _Matrix) -> _Projection:
    """The matrix's projection, made on first use (only the two-stage search needs it) and kept with it. The
    directions come from at most PROJECTION_SAMPLE evenly spaced paragraphs (a [dim, dim] second-moment matrix of
    a sample says as much as one of all); every paragraph is then projected with one [N, dim] @ [dim, r] product."""
    if matrix.projection is None:
        centering = matrix.centering
        total = matrix.vectors.shape[0]
        norms = np.maximum(centering.paragraph_norms, 1e-6)
        sample = np.unique(np.linspace(0, total - 1, num=min(PROJECTION_SAMPLE, total)).astype(np.int64))
        rows = (matrix.vectors[sample] - centering.paragraph_mean) / norms[sample, None]  # [S, dim]
        # Eigenvectors in ascending order of eigenvalue: the last PROJECTION_DIM, largest first.
        _, vectors = np.linalg.eigh(rows.T @ rows)
        basis = np.ascontiguousarray(vectors[:, ::-1][:, :PROJECTION_DIM], dtype=np.float32)  # [dim, r]
        # ((p - mean) / |p - mean|) @ basis without a centred copy of the matrix.
        projected = (matrix.vectors @ basis - centering.paragraph_mean @ basis) / norms[:, None]  # [N, r]
        matrix.projection = _Projection(basis=basis, projected=np.ascontiguousarray(projected, dtype=np.float32))
    return matrix.projection



_CACHE: OrderedDict[tuple[str, str, int], _Matrix] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 8
_FETCH_CHUNK = 500


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def _sentence_matrix(blob: bytes | None, dim: int) -> np.ndarray | None:
    if blob is None or len(blob) == 0 or len(blob) % (2 * dim):
        return None
    return np.frombuffer(blob, dtype="<f2").reshape(-1, dim).astype(np.float32)


def _load_matrix(session: Session, novel: Novel, embedder: str, dim: int) -> _Matrix:
    """The novel's paragraph (and sentence) vectors for one embedder. Unchanged since last time: the cached matrix.
    Only rows added (a step): just those are read. Anything else (an edit, an undo or redo, a deletion, a move, a
    backfill): the (id, position) list is re-read and only the vectors not cached yet are fetched. Either way the
    new matrix keeps the cached rows' values and computes only the new rows' (_matrix_from)."""
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
            _remember(key, appended)
            return appended
    else:
        cached = _empty_matrix(dim)
    rows = session.execute(
        select(Embedding.id, Embedding.paragraph_id, Paragraph.position, Embedding.sentence_vectors.is_not(None))
        .join(Paragraph, Paragraph.id == Embedding.paragraph_id)
        .where(*where).order_by(Embedding.id)
    ).all()
    count = len(rows)
    embedding_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=count)
    kept = np.full(count, -1, dtype=np.int64)
    if cached.embedding_ids.size:
        # Both id lists are sorted: match them with searchsorted. A cached row without sentence vectors that has
        # some now (backfill_sentences fills them in place) is read again.
        where_cached = np.minimum(np.searchsorted(cached.embedding_ids, embedding_ids),
                                  cached.embedding_ids.size - 1)
        has_sentences = np.fromiter((bool(r[3]) for r in rows), dtype=bool, count=count)
        have = (cached.embedding_ids[where_cached] == embedding_ids) \
            & ~((cached.sentence_counts[where_cached] == 0) & has_sentences)
        kept[have] = where_cached[have]
    missing = embedding_ids[kept < 0]
    vectors = np.empty((missing.size, dim), dtype=np.float32)
    sentences: list = [None] * missing.size
    slot = {int(e): i for i, e in enumerate(missing)}
    for start in range(0, missing.size, _FETCH_CHUNK):
        chunk = [int(e) for e in missing[start:start + _FETCH_CHUNK]]
        for embedding_id, blob, sentence_blob in session.execute(
                select(Embedding.id, Embedding.vector, Embedding.sentence_vectors).where(Embedding.id.in_(chunk))):
            vectors[slot[embedding_id]] = np.frombuffer(blob, dtype="<f4")
            sentences[slot[embedding_id]] = _sentence_matrix(sentence_blob, dim)
    matrix = _matrix_from(cached, epoch, embedding_ids,
                          np.fromiter((r[1] for r in rows), dtype=np.int64, count=count),
                          np.fromiter((r[2] for r in rows), dtype=np.int64, count=count), kept,
                          _NewRows(vectors=vectors, sentences=sentences))
    _remember(key, matrix)
    return matrix


def _remember(key: tuple, matrix: _Matrix) -> None:
    with _CACHE_LOCK:
        _CACHE[key] = matrix
        _CACHE.move_to_end(key)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)


def _appended(session: Session, cached: _Matrix, where: tuple, epoch: tuple) -> _Matrix | None:
    """The common case after a step: rows were only added at the end. Checked with aggregates computed inside the
    database (count, id sum, position sum, rows with sentences), so no per-row work for the rows already cached;
    None when anything else changed (an edit, a deletion, an undo, paragraphs moved, sentences backfilled), and
    the caller re-reads the id list."""
    joined = lambda query: query.join(Paragraph, Paragraph.id == Embedding.paragraph_id).where(*where)  # noqa: E731
    count, id_sum, position_sum, with_sentences = session.execute(joined(select(
        func.count(Embedding.id), func.coalesce(func.sum(Embedding.id), 0),
        func.coalesce(func.sum(Paragraph.position), 0), func.count(Embedding.sentence_vectors)))).one()
    last_id = int(cached.embedding_ids[-1]) if cached.embedding_ids.size else 0
    new_rows = session.execute(joined(select(Embedding.id, Embedding.paragraph_id, Paragraph.position,
                                             Embedding.vector, Embedding.sentence_vectors))
                               .where(Embedding.id > last_id).order_by(Embedding.id)).all()
    if (int(count) != cached.embedding_ids.size + len(new_rows)
            or int(id_sum) != int(cached.embedding_ids.sum()) + sum(r[0] for r in new_rows)
            or int(position_sum) != int(cached.positions.sum()) + sum(r[2] for r in new_rows)
            or int(with_sentences) != int((cached.sentence_counts > 0).sum())
            + sum(r[4] is not None for r in new_rows)):
        return None
    dim = cached.vectors.shape[1]
    added = np.frombuffer(b"".join(r[3] for r in new_rows), dtype="<f4").reshape(len(new_rows), dim)
    kept = np.concatenate([np.arange(cached.embedding_ids.size), np.full(len(new_rows), -1)]).astype(np.int64)
    return _matrix_from(
        cached, epoch, np.concatenate([cached.embedding_ids, [r[0] for r in new_rows]]).astype(np.int64),
        np.concatenate([cached.paragraph_ids, [r[1] for r in new_rows]]).astype(np.int64),
        np.concatenate([cached.positions, [r[2] for r in new_rows]]).astype(np.int64), kept,
        _NewRows(vectors=added, sentences=[_sentence_matrix(r[4], dim) for r in new_rows]))


def _query(query_vector: Vector | np.ndarray, embedder: str | None) -> tuple[np.ndarray, str]:
    if isinstance(query_vector, Vector):
        values, name = query_vector.values, query_vector.embedder
    else:
        values, name = query_vector, embedder
    if name is None:
        raise ValueError("top_k needs the embedder's name: pass a memory.embeddings.Vector or embedder=...")
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


# How a paragraph scores for a query vector q: its best sentence plus half its whole paragraph (and, when asked for,
# its best window, below),
#     max_s cos(q, s) + SENTENCE_WINDOW_WEIGHT * max_i cos(q, s_i + s_i+1) + SENTENCE_PARAGRAPH_WEIGHT * cos(q, p).
# bench/recall.py (15 facts, each the 3rd of 5 sentences of an on-topic paragraph, paraphrased questions, real
# MiniLM; bench/results/recall.json), recall@3 at 300 / 1,000 / 3,000 paragraphs:
#   paragraph vector alone 0.53 / 0.53 / 0.47; best sentence alone 0.67 / 0.60 / 0.60;
#   best sentence + 0.25 paragraph 0.73 / 0.67 / 0.67; + 0.5 paragraph 0.80 / 0.73 / 0.73; + 1.0 0.73 / 0.67 / 0.67.
# The sentence vectors are stored as float16: every question's top 5 was identical to float32's at every size.
# Those figures (and the window's and hubness weight's below) were chosen on the 15 facts alone. With 6 held-out and
# 30 fresh facts written blind beside them (bench/recall_facts.py: 51 facts, the development set), the weights were
# chosen again in a grid (window 0-1.0, paragraph 0.25-2.0, hubness 0-0.75; numpy on cached vectors), fused recall@3
# over the 51 at 300 / 1,000 / 3,000 paragraphs, as before (window 1.0, paragraph 0.5, hubness 0.5) -> now (window
# 0, paragraph 0.5, hubness 0.25):
#   the 51 planted alone: 42 / 40 / 39 -> 42 / 42 / 41;
#   with the 30 test facts planted too (81 hand-written paragraphs, each a rival to the others): 33 / 31 / 31 ->
#   38 / 36 / 36;
#   the same with two filler paragraphs in five cut to one sentence and one to two (dialogue lines, as a novel has):
#   33 / 32 / 32 -> 37 / 37 / 37.
# Paragraph 1.0 scored a little higher still on the first (44 / 45 / 43), but it counts a one-sentence paragraph's
# one match twice, and so put "Mara put the bread away." above the paragraph that says where Mara hid her savings
# (tests/memory/test_store_lexical.py); paragraph hubness (the mean, the max or the paragraphs' own) did no better.
# TEST_FACTS, written blind after this choice, were measured once with it: bench/results/recall.json's "test".
SENTENCE_PARAGRAPH_WEIGHT = 0.5
# Plus its best window, a sentence and the next one of the same paragraph (cos(q, s_i + s_next), from the same
# per-sentence dot products, so it costs no matmul): a fact told over two sentences, or a question naming a person
# the fact's own sentence calls "she". bench/recall.py (same run as below), at 300 / 1,000 / 3,000 paragraphs:
#   vectors alone, recall@3: window 0 0.80 / 0.73 / 0.73; 0.5 0.80 / 0.73 / 0.73; 1.0 0.87 / 0.80 / 0.80;
#   fused with lexical, window 1.0 against 0: recall@1 0.53 / 0.60 / 0.67 against 0.53 / 0.53 / 0.60, recall@3
#   0.80 at every size either way, recall@5 0.87 / 0.80 / 0.80 against 0.80; the easy needle (the fact a paragraph
#   of its own) loses at 300, recall@3 0.73 against 0.87, and ties at 1,000 and 3,000. Measured on the same 15
#   questions it was chosen on. On the 51 (above) it cost recall, so it is off (0); the term stays for the bench's
#   rows and for a caller that asks for it.
SENTENCE_WINDOW_WEIGHT = 0.0
# Every paragraph is scored exactly up to this many sentence vectors in the novel (about 10,000 paragraphs: one
# matrix-vector product over them, ~6 ms here); above, a two-stage search: the TWO_STAGE_CANDIDATES paragraphs
# closest by paragraph vector (one [N, 384] product), then exact sentence and window scores for just those.
# Warm fused top-5 at 100,000 paragraphs (random vectors, 5 sentences each), bench/results/recall.json under a
# load average of ~7 on 2 cores: 95 ms two-stage against 529 ms exact (vector scoring alone, quiet: 11 ms
# against 98 ms). The price: a fact whose paragraph vector ranks below the candidates is lost. Forced with 100
# candidates on the hard benchmark, fused recall@3 is 0.80 / 0.67 / 0.60 at 300 / 1,000 / 3,000 (a third, a tenth,
# a thirtieth of the novel) against 0.80 exact on raw cosines; centred (CENTER_MIN_SENTENCES) 0.80 / 0.87 / 0.87, the
# same as exact. 1,000 of 100,000 is a hundredth, so expect a loss there still.
EXACT_SEARCH_MAX_SENTENCES = 50_000
TWO_STAGE_CANDIDATES = 1_000
# Every cosine is taken after subtracting the novel's mean vector (the sentences' for sentences and windows, the
# paragraphs' for paragraphs; from values cached with the matrix, so a query costs no extra matmul), once the novel
# has this many sentence vectors (about 100 paragraphs; a mean of fewer says little). In a novel every paragraph
# shares its characters, places and tone, and that common direction dominates MiniLM's raw cosines, so paragraphs
# merely "about the story" outrank the one holding the fact; centring removes it (Mu & Viswanath 2018, "all-but-the-
# top"; removing the top 1-8 principal directions as well, or whitening, did no better on recall@3). The weights
# above were chosen on raw cosines and still hold centred (window 0 or 1.0, paragraph 0.25-1.0: the same recall@3).
# bench/recall.py, same 15 questions, recall@3 at 300 / 1,000 / 3,000 paragraphs, raw -> centred:
#   hard, fused: 0.80 / 0.80 / 0.80 -> 0.80 / 0.87 / 0.87 (the trader's payment, Q10, rank 6 / 25 -> 3 / 3 at 1,000 / 3,000);
#   hard, vectors alone: 0.87 / 0.80 / 0.80 -> 0.87 / 0.87 / 0.87; paragraph vector alone 0.53 / 0.53 / 0.47 ->
#   0.80 / 0.73 / 0.67, which is what the two-stage search picks candidates by: forced two-stage with 100
#   candidates, fused, 0.80 / 0.67 / 0.60 -> 0.80 / 0.87 / 0.87;
#   easy needle, fused: 0.73 / 0.73 / 0.73 -> 0.93 / 0.93 / 0.93.
CENTER_MIN_SENTENCES = 500
# Centred, a sentence's cosine is lowered by HUB_WEIGHT x its hubness: the mean centred cosine to its HUB_NEIGHBOURS
# closest sentences among HUB_REFERENCE evenly spaced sentences of the novel (computed with the matrix, ~60 ms at
# 5,000 sentences under load). A sentence like many others of the novel ("She closed it and went to find the
# quartermaster.", a scene told again) is close to every question a little, and outranks the one sentence that
# holds the fact: the hubness correction of cross-lingual retrieval (CSLS, Conneau et al. 2018), with the novel's
# own sentences as the neighbourhood. Not computed above HUB_MAX_SENTENCES (the two-stage search then goes
# without it: a [M, HUB_REFERENCE] product over half a million sentences costs seconds on every edit).
# bench/recall.py (bench/results/recall.json; 15 facts, and 6 held out, written before any result on them was seen),
# best sentence + 1.0 window + 0.5 paragraph, recall@1 / @3 at 300 / 1,000 / 3,000 paragraphs, without -> with:
#   the 15: 0.73 / 0.67 / 0.67 -> 0.73 / 0.73 / 0.73 at @1, 0.87 -> 0.87 at @3 at every size (the two-hop alibi
#   question, Q12, rank 39 / >50 / >50 -> 9 / 7 / 10; the keeper's key, Q1, 8 / 13 / 30 -> 6 at each size);
#   held out: recall@3 0.83 / 0.83 / 0.67 -> 1.00 at every size; easy needle (the 15) 0.93 -> 1.00 / 1.00 / 0.93.
# The weight, 0.5 (0.25 kept Q12 out of the top 10), the 10 neighbours and the 512 references (256 lost a held-out
# fact at 3,000) were chosen in numpy on the same cached vectors with the held-out figures in view, so they are
# less blind than the facts themselves. On the 51 (SENTENCE_PARAGRAPH_WEIGHT above) 0.25, with the window off.
HUB_WEIGHT = 0.25
HUB_NEIGHBOURS = 10
HUB_REFERENCE = 512
HUB_MAX_SENTENCES = EXACT_SEARCH_MAX_SENTENCES
# Above it hubness stays off: it needs one [M, HUB_REFERENCE] product over every sentence whenever the novel's
# mean moves (any edit), ~100 GFLOP at 100,000 paragraphs, seconds on two cores; computing it only for a query's
# candidates would cost ~1 GFLOP a query, past the 20 ms budget. More references change nothing measurable: 4,096
# instead of 512 (10 or 50 neighbours) gave the same recall@3 at 300 / 1,000 / 3,000 paragraphs.
# What the default still misses at recall@3 on bench/recall.py, and what was tried on it (numpy on the same cached
# vectors, recall@3 of the 15 facts at 300 / 1,000 / 3,000, the 6 held out 1.00 unless said): two facts, the
# keeper's key (Q1, rank 6 at every size: its sentence's centred cosine is 0.23, below vague one-line sentences of
# other planted paragraphs, "Nobody could say who had put it there." 0.27) and the alibi (Q12, rank 7-10). None of
# these reached 0.9: the second-best sentence or the paragraph's mean sentence added (0.5 x), a three-sentence
# window, paragraph weight 0 or 1 (0.87; held out 0.83 at 3,000 with 0), 3 or 30 hubness neighbours (0.87; 30:
# held out 0.83 at 3,000), hubness weight 0.75 (0.87, held out 1.00 / 0.83 / 0.83) or 1 (0.87 / 0.80 / 0.87, held
# out 0.83), hubness as a z-score of each sentence's cosines to the references (0.87, held out 0.83 at 3,000) or as
# mutual proximity with the query's own cosine spread (0.80 / 0.80 / 0.87), the question's opening ("Where did")
# stripped before embedding (0.80 at each size; averaged with the whole question's vector 0.80 / 0.87 / 0.80), at
# 1,000 only each sentence embedded again with the one before it or with the paragraph's first as context text (a
# second vector per sentence; as the window 0.87, alone 0.80), and a query-side hubness, each sentence less 0.5 x
# its mean cosine to its 3 nearest of the other 20 benchmark questions: recall@1 0.80 and @5 1.00 at every size,
# held out @1 0.83, but @3 still 0.87, and it needs a pool of past queries the app does not keep. The lexical side
# cannot help either fact: neither question shares a word or a stem with its fact's paragraph.
# The two-stage search picks its TWO_STAGE_CANDIDATES through a projection of the centred paragraph vectors on the
# novel's top PROJECTION_DIM principal directions ([N, 128] float32: a third of the [N, 384] product), then exact
# cosines of the PROJECTION_SHORTLIST x candidates rows it ranks first choose the candidates. 0: exact first stage.
# bench/recall.py, the two-stage search forced (100 candidates) on the hard benchmark: the same ranks for every
# question at 300 / 1,000 / 3,000 paragraphs, projected or exact. At 100,000 paragraphs (random vectors, under a
# load average of ~12 on 2 cores) the first stage took 32 ms against 40 (the products alone 16 against 36); the
# projection is made in ~1.3 s there, on the first two-stage query after the matrix was (re)loaded, and holds 512
# bytes a paragraph. Not taken: float16 or int8 copies of the matrix, which halve or quarter its bytes but which
# numpy multiplies without BLAS: the [100,000, 384] product took 2,546 ms in float16 and 172 ms in int8 against
# 177 ms in float32 in the same run (bench/recall.py, paragraph_product_ms_median).
PROJECTION_DIM = 128
PROJECTION_SHORTLIST = 4
PROJECTION_SAMPLE = 20_000
# Reciprocal rank fusion: a paragraph's fused score is sum over rankings of weight / (RRF_K + rank). 60 is the
# constant of Cormack et al. (2009). The lexical ranking fused in looks only for the query's rare words (in at most
# RARE_TERM_MAX_PARAGRAPHS paragraphs of the novel: names, objects mentioned once), so a paraphrase that shares
# only everyday words with half the novel is ranked by the vectors alone. On bench/recall.py, fusing that with
# best sentence + 0.5 paragraph lifts recall@3 from 0.80 / 0.73 / 0.73 to 0.80 / 0.80 / 0.80 (lexical alone, every
# word: 0.33 at each size); lexical weight 0.5 and 1.0 tie on recall@3, 0.5 is better at recall@1 (0.53 / 0.53 /
# 0.60 against 0.47 / 0.53 / 0.53 before the window term; with it 0.53 / 0.60 / 0.67 against 0.53 / 0.60 / 0.60).
RRF_K = 60
FUSION_LEXICAL_WEIGHT = 0.5
RARE_TERM_MAX_PARAGRAPHS = 5
# And of those rare words only the names (name_terms: capitalised, not a sentence's first word), unless the query
# has no capital at all (a keyword search typed in lower case). A paraphrased question's other rare words ("tower",
# "girl", "world") are as likely to be rare in some other paragraph as in the one it asks about: with 6 held-out
# facts planted beside the 15, fusing every rare word took fused recall@3 to 0.73 at 300 / 1,000 / 3,000 paragraphs
# (recall@1 0.47) against the vectors' own 0.87 (0.73); names only, fused is 0.87 (0.73), held out 1.00 at every
# size. On this benchmark the names asked about (Q13-Q15) are found by the vectors too; the lexical side is there
# for the names MiniLM misses (tests/memory/test_store_lexical.py, a character called Brick).
FUSION_NAMES_ONLY = True
# How deep each ranking is read before fusing.
FUSION_DEPTH = 100

METHODS = ("paragraph", "sentence", "lexical", "fused")


@dataclass(frozen=True)
class Hit:
    """A paragraph retrieval found, and why: its vector score and rank, its lexical rank, its best sentence, its LM
    rerank rank."""

    paragraph: Paragraph
    score: float  # what the ranking sorted by: the vector score, bm25/ts_rank for lexical, the RRF score fused
    vector_score: float | None = None
    vector_rank: int | None = None  # 1-based, among the novel's paragraphs
    lexical_rank: int | None = None  # 1-based, among paragraphs sharing a word with the query
    sentence: str | None = None  # the paragraph's sentence closest to the query vector
    sentence_span: tuple[int, int] | None = None  # its [start, end) in paragraph.text
    lm_rank: int | None = None  # 1-based, among the hits memory/rerank.py had the language model score
    lm_score: float | None = None  # log P(query | paragraph) under the language model

    def why(self) -> str:
        """One line for the Context and Memory tabs."""
        parts = []
        if self.vector_rank is not None:
            what = "sentence" if self.sentence is not None else "paragraph"
            parts.append(f"vector rank {self.vector_rank} ({what} match {self.vector_score:.2f})")
        if self.lexical_rank is not None:
            parts.append(f"lexical rank {self.lexical_rank} (shares rare words)")
        if self.lm_rank is not None:
            parts.append(f"LM rerank rank {self.lm_rank} (log P(query | paragraph) {self.lm_score:.1f})")
        return " + ".join(parts) or "no match"


def _centered_shift(query: np.ndarray, mean: np.ndarray) -> tuple[float, float]:
    """(q.mean - |mean|^2, |q - mean|): what turns s.q into cos(s - mean, q - mean) given s.mean and |s - mean|."""
    shift = float(query @ mean) - float(mean @ mean)
    return shift, max(float(np.linalg.norm(query - mean)), 1e-6)


def _sentence_cosines(matrix: _Matrix, query: np.ndarray, index: np.ndarray | None,
                      centered: bool, hub_weight: float = HUB_WEIGHT,
                      with_window: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Per sentence (all of them, or those of `index`): cos(q, s) and cos(q, s + s_next) (None unless
    `with_window`), both after subtracting the novel's mean sentence vector when `centered`, and then `hub_weight` x
    the sentence's hubness (a window: the larger of its two); one matrix-vector product."""
    if index is None:
        dots = matrix.sentences @ query  # [M]
        next_of = matrix.window_next
    else:
        dots = np.take(matrix.sentences, index, axis=0) @ query  # [M']
        next_of = np.arange(index.size) + (matrix.window_next[index] - index) if with_window else None
    if not centered:
        if not with_window:
            return dots, None
        norms = matrix.window_norms if index is None else matrix.window_norms[index]
        return dots, (dots + dots[next_of]) / norms
    centering = matrix.centering
    shift, query_norm = _centered_shift(query, centering.sentence_mean)
    pick = (lambda values: values) if index is None else (lambda values: values[index])  # noqa: E731
    dots = dots - pick(centering.sentence_offsets) - shift  # (s - mean) . (q - mean)
    sentence = dots / (np.maximum(pick(centering.sentence_norms), 1e-6) * query_norm)
    window = None
    if with_window:
        window = (dots + dots[next_of]) / (np.maximum(pick(centering.window_norms), 1e-6) * query_norm)
    if hub_weight and centering.sentence_hubness is not None:
        hubness = pick(centering.sentence_hubness)
        sentence = sentence - hub_weight * hubness
        if with_window:
            window = window - hub_weight * np.maximum(hubness, hubness[next_of])
    return sentence, window


def _sentence_scores(matrix: _Matrix, query: np.ndarray, rows: np.ndarray, centered: bool = False,
                     hub_weight: float = HUB_WEIGHT, with_window: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """For each of `rows` (all having sentence vectors): its best sentence and its best window (a sentence with the
    next one, cos(q, s_i + s_next); zeros unless `with_window`), from one matrix-vector product over just those
    rows' sentences."""
    counts = matrix.sentence_counts[rows]
    if rows.size == matrix.rows_with_sentences.size:
        index = None
        starts = matrix.sentence_starts[rows]
    else:
        # The rows' sentence indices, concatenated: each row's start repeated over its count, plus 0, 1, 2, ...
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        index = np.repeat(matrix.sentence_starts[rows] - starts, counts) + np.arange(int(counts.sum()))
    sentence, window = _sentence_cosines(matrix, query, index, centered, hub_weight, with_window)
    best = np.maximum.reduceat(sentence, starts)
    return best, (np.maximum.reduceat(window, starts) if window is not None else np.zeros_like(best))


def _paragraph_cosines(matrix: _Matrix, query: np.ndarray, centered: bool,
                       rows: np.ndarray | None = None) -> np.ndarray:
    """[N] cos(q, p) (or [len(rows)], for just those rows), after subtracting the novel's mean paragraph vector
    when `centered`."""
    dots = (matrix.vectors if rows is None else np.take(matrix.vectors, rows, axis=0)) @ query  # [N] or [N']
    if not centered:
        return dots
    centering = matrix.centering
    pick = (lambda values: values) if rows is None else (lambda values: values[rows])  # noqa: E731
    shift, query_norm = _centered_shift(query, centering.paragraph_mean)
    return (dots - pick(centering.paragraph_offsets) - shift) / (np.maximum(pick(centering.paragraph_norms), 1e-6)
                                                                  * query_norm)


def _closest_paragraphs(matrix: _Matrix, query: np.ndarray, count: int, centered: bool,
                        exclude: np.ndarray | None, shortlist: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cos(q, p) of those rows): the `count` rows closest to the query by (centred) paragraph cosine, never
    one of `exclude`, in row order. With `shortlist` > 0 (centred only), the projection (_projection) first picks
    `shortlist` x `count` rows and exact cosines rank just those; else every row's exact cosine is taken."""
    total = matrix.vectors.shape[0]
    allowed = total - (int(exclude.sum()) if exclude is not None else 0)
    count = min(count, allowed)
    if centered and shortlist > 0 and shortlist * count < allowed:
        projection = _projection(matrix)
        centering = matrix.centering
        approximate = projection.projected @ (projection.basis.T @ (query - centering.paragraph_mean))  # [N]
        if exclude is not None:
            approximate[exclude] = -np.inf
        rows = np.argpartition(-approximate, shortlist * count - 1)[:shortlist * count]
        cosines = _paragraph_cosines(matrix, query, centered, rows)
    else:
        rows = np.arange(total)
        cosines = _paragraph_cosines(matrix, query, centered)
        if exclude is not None:
            cosines[exclude] = -np.inf
    keep = np.argpartition(-cosines, count - 1)[:count] if 0 < count < rows.size else np.arange(min(count, rows.size))
    order = np.argsort(rows[keep])
    return rows[keep][order], cosines[keep][order]


def _vector_scores(matrix: _Matrix, query: np.ndarray, method: str, paragraph_weight: float,
                   window_weight: float = SENTENCE_WINDOW_WEIGHT, exact_up_to: int = EXACT_SEARCH_MAX_SENTENCES,
                   candidates: int = TWO_STAGE_CANDIDATES, exclude: np.ndarray | None = None,
                   centered: bool = False, hub_weight: float = HUB_WEIGHT,
                   shortlist: int = PROJECTION_SHORTLIST) -> np.ndarray:
    """[N] scores: cos(q, paragraph) for "paragraph"; else the best sentence + window_weight * the best window +
    paragraph_weight * cos(q, paragraph) (a row without sentence vectors yet counts its paragraph vector as its one
    sentence and window). Up to `exact_up_to` sentence vectors every row is scored; above, only the `candidates`
    rows closest by paragraph vector (after `exclude`, a mask of rows never to rank; picked through the projection
    when `shortlist` > 0, _closest_paragraphs) are, the rest get -inf.
    `centered`: every cosine taken after subtracting the novel's mean vector (CENTER_MIN_SENTENCES), sentences
    less `hub_weight` x their hubness (HUB_WEIGHT)."""
    total = matrix.vectors.shape[0]
    if method != "paragraph" and matrix.sentences.shape[0] > exact_up_to and 0 < candidates < total:
        chosen, paragraph = _closest_paragraphs(matrix, query, candidates, centered, exclude, shortlist)
        scores = np.full(total, -np.inf, dtype=np.float32)
    else:
        chosen = None
        paragraph = _paragraph_cosines(matrix, query, centered)
        if exclude is not None:
            paragraph[exclude] = -np.inf
        if method == "paragraph":
            return paragraph
        scores = np.empty(total, dtype=np.float32)
    # Every scored row first as if its paragraph vector were its one sentence and window; then the real ones.
    if chosen is None:
        scores[:] = (1.0 + window_weight + paragraph_weight) * paragraph
        rows, paragraph_of_rows = matrix.rows_with_sentences, paragraph[matrix.rows_with_sentences]
    else:
        scores[chosen] = (1.0 + window_weight + paragraph_weight) * paragraph
        has = matrix.sentence_counts[chosen] > 0
        rows, paragraph_of_rows = chosen[has], paragraph[has]
    if rows.size:
        best, window = _sentence_scores(matrix, query, rows, centered, hub_weight, with_window=window_weight != 0)
        scores[rows] = best + window_weight * window + paragraph_weight * paragraph_of_rows
    if exclude is not None:
        scores[exclude] = -np.inf
    return scores


def _best_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """The rows of the k highest finite scores, best first."""
    k = min(k, int(np.isfinite(scores).sum()))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    best = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(scores.shape[0])
    return best[np.argsort(-scores[best], kind="stable")]


def _best_sentence(matrix: _Matrix, row: int, query: np.ndarray, text: str, centered: bool = False,
                   hub_weight: float = HUB_WEIGHT) -> tuple[str, tuple[int, int]] | None:
    count = int(matrix.sentence_counts[row])
    spans = split_sentences(text)
    if count == 0 or count != len(spans):
        return None
    start = int(matrix.sentence_starts[row])
    sentence, _ = _sentence_cosines(matrix, query, np.arange(start, start + count), centered, hub_weight,
                                    with_window=False)
    best = int(np.argmax(sentence))
    return text[spans[best][0]:spans[best][1]], spans[best]


def search(session: Session, novel_id: int, query_vector: Vector | None, k: int, *, text: str = "",
           method: str = "fused", exclude_positions: Iterable[int] = (),
           paragraph_weight: float = SENTENCE_PARAGRAPH_WEIGHT, window_weight: float = SENTENCE_WINDOW_WEIGHT,
           lexical_weight: float = FUSION_LEXICAL_WEIGHT, rrf_k: int = RRF_K,
           exact_up_to: int = EXACT_SEARCH_MAX_SENTENCES, candidates: int = TWO_STAGE_CANDIDATES,
           center_from: int = CENTER_MIN_SENTENCES, hub_weight: float = HUB_WEIGHT,
           shortlist: int = PROJECTION_SHORTLIST, names_only: bool = FUSION_NAMES_ONLY) -> list[Hit]:
    """The k paragraphs that best answer a query, best first, each with why it was chosen.

    `query_vector` ranks by vectors ("paragraph": whole-paragraph cosine; "sentence": the best sentence plus
    `window_weight` of the best two-sentence window plus `paragraph_weight` of the paragraph, every paragraph scored
    up to `exact_up_to` sentence vectors in the novel, above that only the `candidates` closest by paragraph
    vector); `text` ranks lexically (SQLite FTS5 bm25, PostgreSQL ts_rank);
    "fused" merges the two rankings by reciprocal rank fusion (the lexical one over the text's rare names when
    `names_only`, FUSION_NAMES_ONLY), and falls back to whichever one it has.
    In a novel with at least `center_from` sentence vectors every cosine is taken after subtracting the novel's
    mean vector (sentence and paragraph means apart), so what all its paragraphs share stops deciding the ranking,
    and each sentence's cosine less `hub_weight` x its hubness (HUB_WEIGHT). `shortlist`: the two-stage search's
    first stage through the projection (PROJECTION_SHORTLIST; 0: exact paragraph cosines).
    """
    if method not in METHODS:
        raise ValueError(f"Unknown retrieval method {method!r}: use one of {', '.join(METHODS)}.")
    novel = session.get(Novel, novel_id)
    if novel is None:
        raise NotFoundError(f"No novel with id {novel_id}.")
    exclude = list(exclude_positions)
    if k <= 0:
        return []
    vector_hits: dict[int, tuple[int, float, int]] = {}  # paragraph id -> (rank, score, matrix row)
    matrix = query = None
    centered = False
    if query_vector is not None and method != "lexical":
        query, name = _query(query_vector, None)
        matrix = _load_matrix(session, novel, name, int(query.shape[0]))
        if matrix.vectors.shape[0]:
            mode = "paragraph" if method == "paragraph" else "sentence"
            depth = k if method in ("paragraph", "sentence") else max(k, FUSION_DEPTH)
            excluded = np.isin(matrix.positions, np.asarray(exclude, dtype=np.int64)) if exclude else None
            centered = matrix.sentences.shape[0] >= center_from
            scores = _vector_scores(matrix, query, mode, paragraph_weight, window_weight, exact_up_to,
                                    max(candidates, depth), excluded, centered=centered, hub_weight=hub_weight,
                                    shortlist=shortlist)
            for rank, row in enumerate(_best_rows(scores, depth), 1):
                vector_hits[int(matrix.paragraph_ids[row])] = (rank, float(scores[row]), int(row))
    lexical_hits: dict[int, tuple[int, float]] = {}
    if text.strip() and method in ("lexical", "fused"):
        depth = k if method == "lexical" else max(k, FUSION_DEPTH)
        found = lexical_top_k(session, novel_id, text, depth, exclude, rare_only=method == "fused",
                              names_only=method == "fused" and names_only)
        for rank, (paragraph_id, score) in enumerate(found, 1):
            lexical_hits[paragraph_id] = (rank, score)
    if method == "fused":
        fused = {pid: 1.0 / (rrf_k + rank) for pid, (rank, _, _) in vector_hits.items()}
        for pid, (rank, _) in lexical_hits.items():
            fused[pid] = fused.get(pid, 0.0) + lexical_weight / (rrf_k + rank)
        order = sorted(fused, key=lambda pid: (-fused[pid], pid))[:k]
        ranking = {pid: fused[pid] for pid in order}
    elif method == "lexical":
        ranking = {pid: score for pid, (_, score) in lexical_hits.items()}
    else:
        ranking = {pid: score for pid, (_, score, _) in vector_hits.items()}
    found = {p.id: p for p in session.scalars(select(Paragraph).where(Paragraph.id.in_(list(ranking))))}
    hits = []
    for pid, score in ranking.items():
        paragraph = found.get(pid)
        if paragraph is None:
            continue
        vector = vector_hits.get(pid)
        best = None
        if vector is not None and method != "paragraph":
            best = _best_sentence(matrix, vector[2], query, paragraph.text, centered, hub_weight)
        hits.append(Hit(paragraph=paragraph, score=score, vector_score=vector[1] if vector else None,
                        vector_rank=vector[0] if vector else None,
                        lexical_rank=lexical_hits[pid][0] if pid in lexical_hits else None,
                        sentence=best[0] if best else None, sentence_span=best[1] if best else None))
    return hits


# Words too common to say anything about which paragraph is meant; dropped from lexical queries.
_STOPWORDS = frozenset("""a an and are as at be been but by did do does for from had has have he her hers him his how
i if in into is it its me my no not of on or our she so than that the their them then there these they this those to
was we were what when where which while who whom why will with would you your""".split())
_MAX_QUERY_TERMS = 48


def name_terms(text: str) -> set[str]:
    """The words of `text` that look like names: capitalised and not the first word of their sentence (lower-case,
    as query_terms gives them)."""
    names = set()
    for start, end in split_sentences(text):
        words = list(re.finditer(r"[^\W_]+", text[start:end]))
        names.update(word.group().lower() for word in words[1:] if word.group()[0].isupper())
    return names


def query_terms(text: str) -> list[str]:
    """The words of `text` a lexical search looks for: lower-case, no stopwords, each once, in order."""
    seen: dict[str, None] = {}
    for word in re.findall(r"[^\W_]+", text.lower()):
        if len(word) > 1 and word not in _STOPWORDS:
            seen.setdefault(word, None)
    return list(seen)[:_MAX_QUERY_TERMS]


def _fts_match(terms: list[str]) -> str:
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)


def rare_terms(session: Session, novel_id: int, terms: list[str],
               max_paragraphs: int = RARE_TERM_MAX_PARAGRAPHS) -> list[str]:
    """The terms found in 1 to `max_paragraphs` paragraphs of the novel (each counted through the full-text
    index, stopping at max_paragraphs + 1), all counted in one statement (one round trip: ~1 ms saved a term)."""
    if not terms:
        return []
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        # CROSS JOIN keeps the full-text index the outer loop (SQLite never reorders one), instead of every paragraph
        # of the novel probing it.
        count = (f"(SELECT count(*) FROM (SELECT 1 FROM {PARAGRAPH_FTS_TABLE} CROSS JOIN paragraphs p "
                 f"ON p.id = {PARAGRAPH_FTS_TABLE}.rowid WHERE {PARAGRAPH_FTS_TABLE} MATCH :term{{i}} "
                 "AND p.novel_id = :novel LIMIT :limit))")
        term_of = lambda term: _fts_match([term])  # noqa: E731
    elif dialect == "postgresql":
        count = (f"(SELECT count(*) FROM (SELECT 1 FROM paragraphs p WHERE p.novel_id = :novel AND "
                 f"to_tsvector('{TSVECTOR_CONFIG}', p.text) @@ to_tsquery('{TSVECTOR_CONFIG}', :term{{i}}) "
                 "LIMIT :limit) AS found{i})")
        term_of = lambda term: term  # noqa: E731
    else:
        raise StoreError(f"Lexical retrieval needs SQLite or PostgreSQL, not {dialect}.")
    statement = sql_text("SELECT " + ", ".join(count.format(i=i) for i in range(len(terms))))
    params = {f"term{i}": term_of(term) for i, term in enumerate(terms)}
    counts = session.execute(statement, {**params, "novel": novel_id, "limit": max_paragraphs + 1}).one()
    return [term for term, found in zip(terms, counts) if 1 <= int(found) <= max_paragraphs]


def lexical_top_k(session: Session, novel_id: int, text: str, k: int, exclude_positions: Iterable[int] = (),
                  *, rare_only: bool = False, names_only: bool = False) -> list[tuple[int, float]]:
    """(paragraph id, score) of the k paragraphs sharing the most telling words with `text`, best first: any of
    the query's words may match (OR), ranked by bm25 in SQLite's FTS5 index or ts_rank on PostgreSQL. With
    `rare_only`, only the words that appear in few paragraphs of the novel (rare_terms) are looked for; with
    `names_only`, only the names (name_terms), unless `text` has no capital letter at all."""
    terms = query_terms(text)
    if names_only and text != text.lower():
        names = name_terms(text)
        terms = [term for term in terms if term in names]
    if terms and rare_only:
        terms = rare_terms(session, novel_id, terms)
    if not terms or k <= 0:
        return []
    excluded = sorted(set(int(p) for p in exclude_positions))
    limit = k + len(excluded)
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        match = _fts_match(terms)
        rows = session.execute(sql_text(
            f"SELECT p.id, p.position, -bm25({PARAGRAPH_FTS_TABLE}) AS score FROM {PARAGRAPH_FTS_TABLE} "
            f"CROSS JOIN paragraphs p ON p.id = {PARAGRAPH_FTS_TABLE}.rowid "
            f"WHERE {PARAGRAPH_FTS_TABLE} MATCH :match AND p.novel_id = :novel "
            "ORDER BY score DESC, p.id LIMIT :limit"), {"match": match, "novel": novel_id, "limit": limit}).all()
    elif dialect == "postgresql":
        # to_tsquery syntax from plain words: each word alone (already stripped to letters and digits), OR-ed.
        rows = session.execute(sql_text(
            f"SELECT p.id, p.position, ts_rank(to_tsvector('{TSVECTOR_CONFIG}', p.text), q) AS score "
            f"FROM paragraphs p, to_tsquery('{TSVECTOR_CONFIG}', :query) q "
            f"WHERE p.novel_id = :novel AND to_tsvector('{TSVECTOR_CONFIG}', p.text) @@ q "
            "ORDER BY score DESC, p.id LIMIT :limit"),
            {"query": " | ".join(terms), "novel": novel_id, "limit": limit}).all()
    else:
        raise StoreError(f"Lexical retrieval needs SQLite or PostgreSQL, not {dialect}.")
    return [(int(r[0]), float(r[2])) for r in rows if int(r[1]) not in excluded][:k]


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


def embed_missing(session: Session, novel_id: int, embedder: Embedder, batch: int = 64,
                  progress: Callable[[int, int], None] | None = None) -> int:
    """Embed every paragraph (with its sentences) and lore entry of a novel that has no vector from this embedder
    yet (after an import, an edit saved without a vector, or switching embedders), then backfill the sentence
    vectors of paragraphs saved before they existed. Returns how many paragraphs and entries were embedded."""
    missing = paragraphs_missing_embedding(session, novel_id, embedder.name)
    for start in range(0, len(missing), batch):
        for paragraph in missing[start:start + batch]:
            set_paragraph_embedding(session, paragraph.id, embedder.passage(paragraph.text))
        if progress is not None:
            progress(min(start + batch, len(missing)), len(missing))
    have = select(Embedding.lore_entry_id).where(Embedding.novel_id == novel_id, Embedding.embedder == embedder.name,
                                                 Embedding.lore_entry_id.is_not(None))
    lore = list(session.scalars(select(LoreEntry).where(LoreEntry.novel_id == novel_id, LoreEntry.id.not_in(have))))
    for entry, values in zip(lore, embedder.embed([f"{e.name}: {e.body}" for e in lore])):
        set_lore_embedding(session, entry.id, Vector(embedder.name, values))
    backfill_sentences(session, novel_id, embedder, batch=batch, progress=progress)
    return len(missing) + len(lore)


def sentence_vectors(embedder: Embedder, texts: Sequence[str]) -> list[np.ndarray]:
    """Each text's sentence vectors [S, dim] (a text without sentence ending is one sentence), all embedded in
    one batch."""
    sentences = [sentence_texts(text)[:MAX_PASSAGE_SENTENCES] or [text] for text in texts]
    values = embedder.embed([sentence for group in sentences for sentence in group])
    ends = np.cumsum([len(group) for group in sentences])
    return [values[end - len(group):end] for group, end in zip(sentences, ends)]


def backfill_sentences(session: Session, novel_id: int, embedder: Embedder, batch: int = 64,
                       progress: Callable[[int, int], None] | None = None) -> int:
    """Give every paragraph vector of this embedder saved without sentence vectors its sentence vectors (`batch`
    paragraphs embedded together); `progress(done, total)` after each batch. Returns how many were filled in.
    Embeds inside the caller's transaction: the engine does the same in short transactions instead
    (app.engine.Engine.backfill_sentences), since nothing may hold one open while a model runs."""
    rows = embeddings_missing_sentences(session, novel_id, embedder.name)
    filled = 0
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        for (embedding, _), values in zip(chunk, sentence_vectors(embedder, [p.text for _, p in chunk])):
            filled += set_sentence_vectors(session, embedding.id, values)
        if progress is not None:
            progress(min(start + batch, len(rows)), len(rows))
    return filled
