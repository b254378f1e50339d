"""Index revisions by (novel, state, seq): undo/redo look up the newest done / oldest undone revision.

Revision ID: 0002
Revises: 0001
"""
from typing import Sequence, Union

from alembic import op

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_index("ix_revisions_novel_state_seq", "revisions", ["novel_id", "state", "seq"])


def downgrade() -> None:
    op.drop_index("ix_revisions_novel_state_seq", table_name="revisions")
