"""Alternatives: other versions of a paragraph (step candidates, retried and rewritten texts) and pending steps.

A new table only; nothing existing changes, so a database made by an earlier version keeps every row.

Revision ID: 0004
Revises: 0003
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "alternatives",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("novel_id", sa.Integer(), nullable=False),
        sa.Column("paragraph_id", sa.Integer(), nullable=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("words", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("instruction", sa.Text(), nullable=True),
        sa.Column("memory", sa.Text(), nullable=True),
        sa.Column("plans", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["novel_id"], ["novels.id"], name="fk_alternatives_novel_id_novels",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["paragraph_id"], ["paragraphs.id"], name="fk_alternatives_paragraph_id_paragraphs",
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_alternatives"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_alternatives_novel_paragraph", "alternatives", ["novel_id", "paragraph_id"])
    op.create_index("ix_alternatives_paragraph_id", "alternatives", ["paragraph_id"])


def downgrade() -> None:
    op.drop_index("ix_alternatives_paragraph_id", table_name="alternatives")
    op.drop_index("ix_alternatives_novel_paragraph", table_name="alternatives")
    op.drop_table("alternatives")
