"""Sentence vectors beside each paragraph vector, and a full-text index over paragraph text.

- `embeddings.sentence_vectors`: [S, dim] float16, one unit row per sentence; existing rows stay NULL and are
  filled on first use (memory.retrieval.backfill_sentences), since this migration has no embedder.
- SQLite: an FTS5 table over `paragraphs.text` (external content, porter stemming) with triggers for insert, text
  update and delete, filled from the paragraphs already there. A later migration that rebuilds `paragraphs` (batch
  mode) must re-create these triggers.
- PostgreSQL: a GIN index on to_tsvector('english', text).

Revision ID: 0003
Revises: 0002
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

SQLITE_UP = (
    "CREATE VIRTUAL TABLE paragraphs_fts USING fts5(text, content='paragraphs', content_rowid='id', "
    "tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER paragraphs_fts_insert AFTER INSERT ON paragraphs BEGIN "
    "INSERT INTO paragraphs_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER paragraphs_fts_delete AFTER DELETE ON paragraphs BEGIN "
    "INSERT INTO paragraphs_fts(paragraphs_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER paragraphs_fts_update AFTER UPDATE OF text ON paragraphs BEGIN "
    "INSERT INTO paragraphs_fts(paragraphs_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "INSERT INTO paragraphs_fts(rowid, text) VALUES (new.id, new.text); END",
    "INSERT INTO paragraphs_fts(paragraphs_fts) VALUES ('rebuild')",
)
SQLITE_DOWN = (
    "DROP TRIGGER paragraphs_fts_update",
    "DROP TRIGGER paragraphs_fts_delete",
    "DROP TRIGGER paragraphs_fts_insert",
    "DROP TABLE paragraphs_fts",
)
POSTGRES_UP = ("CREATE INDEX ix_paragraphs_text_tsvector ON paragraphs USING gin (to_tsvector('english', text))",)
POSTGRES_DOWN = ("DROP INDEX ix_paragraphs_text_tsvector",)


def _statements(up: bool) -> Sequence[str]:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        return SQLITE_UP if up else SQLITE_DOWN
    if dialect == "postgresql":
        return POSTGRES_UP if up else POSTGRES_DOWN
    return ()


def upgrade() -> None:
    op.add_column("embeddings", sa.Column("sentence_vectors", sa.LargeBinary(), nullable=True))
    for statement in _statements(up=True):
        op.execute(statement)


def downgrade() -> None:
    for statement in _statements(up=False):
        op.execute(statement)
    with op.batch_alter_table("embeddings") as batch_op:
        batch_op.drop_column("sentence_vectors")
