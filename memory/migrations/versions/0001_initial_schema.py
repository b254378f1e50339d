"""Initial schema: novels, paragraphs, short-term memories, plan sets, lore, revisions, snapshots, embeddings.

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 03:10:44.674623

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('novels',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('uid', sa.String(length=32), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('premise', sa.Text(), nullable=False),
    sa.Column('style_notes', sa.Text(), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('embedding_epoch', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_novels')),
    sa.UniqueConstraint('uid', name=op.f('uq_novels_uid')),
    sqlite_autoincrement=True
    )
    op.create_table('lore_entries',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('novel_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('keys', sa.JSON(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('always_on', sa.Boolean(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['novel_id'], ['novels.id'], name=op.f('fk_lore_entries_novel_id_novels'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lore_entries')),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('lore_entries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_lore_entries_novel_id'), ['novel_id'], unique=False)

    op.create_table('paragraphs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('novel_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('words', sa.Integer(), nullable=False),
    sa.Column('origin', sa.String(length=16), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint('version >= 1', name=op.f('ck_paragraphs_version_positive')),
    sa.ForeignKeyConstraint(['novel_id'], ['novels.id'], name=op.f('fk_paragraphs_novel_id_novels'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_paragraphs')),
    sa.UniqueConstraint('novel_id', 'position', name=op.f('uq_paragraphs_novel_id')),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('paragraphs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_paragraphs_novel_id'), ['novel_id'], unique=False)

    op.create_table('revisions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('novel_id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('cause', sa.Text(), nullable=False),
    sa.Column('changes', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=8), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['novel_id'], ['novels.id'], name=op.f('fk_revisions_novel_id_novels'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_revisions')),
    sa.UniqueConstraint('novel_id', 'seq', name=op.f('uq_revisions_novel_id')),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('revisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_revisions_novel_id'), ['novel_id'], unique=False)

    op.create_table('short_term_memories',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('novel_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('origin', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['novel_id'], ['novels.id'], name=op.f('fk_short_term_memories_novel_id_novels'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_short_term_memories')),
    sa.UniqueConstraint('novel_id', 'version', name=op.f('uq_short_term_memories_novel_id')),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('short_term_memories', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_short_term_memories_novel_id'), ['novel_id'], unique=False)

    op.create_table('state_snapshots',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('novel_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('fingerprint', sa.String(length=200), nullable=False),
    sa.Column('dtype', sa.String(length=16), nullable=False),
    sa.Column('nbytes', sa.Integer(), nullable=False),
    sa.Column('path', sa.String(length=500), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['novel_id'], ['novels.id'], name=op.f('fk_state_snapshots_novel_id_novels'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_state_snapshots')),
    sa.UniqueConstraint('novel_id', 'position', 'fingerprint', name=op.f('uq_state_snapshots_novel_id')),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('state_snapshots', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_state_snapshots_novel_id'), ['novel_id'], unique=False)

    op.create_table('embeddings',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('novel_id', sa.Integer(), nullable=False),
    sa.Column('paragraph_id', sa.Integer(), nullable=True),
    sa.Column('lore_entry_id', sa.Integer(), nullable=True),
    sa.Column('embedder', sa.String(length=200), nullable=False),
    sa.Column('dim', sa.Integer(), nullable=False),
    sa.Column('vector', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint('(paragraph_id IS NULL) <> (lore_entry_id IS NULL)', name=op.f('ck_embeddings_one_owner')),
    sa.ForeignKeyConstraint(['lore_entry_id'], ['lore_entries.id'], name=op.f('fk_embeddings_lore_entry_id_lore_entries'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['novel_id'], ['novels.id'], name=op.f('fk_embeddings_novel_id_novels'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['paragraph_id'], ['paragraphs.id'], name=op.f('fk_embeddings_paragraph_id_paragraphs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_embeddings')),
    sa.UniqueConstraint('lore_entry_id', 'embedder', name=op.f('uq_embeddings_lore_entry_id')),
    sa.UniqueConstraint('paragraph_id', 'embedder', name=op.f('uq_embeddings_paragraph_id')),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('embeddings', schema=None) as batch_op:
        batch_op.create_index('ix_embeddings_novel_embedder', ['novel_id', 'embedder'], unique=False)

    op.create_table('plan_sets',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('novel_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('plans', sa.JSON(), nullable=False),
    sa.Column('chosen_index', sa.Integer(), nullable=True),
    sa.Column('used_text', sa.Text(), nullable=True),
    sa.Column('paragraph_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['novel_id'], ['novels.id'], name=op.f('fk_plan_sets_novel_id_novels'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['paragraph_id'], ['paragraphs.id'], name=op.f('fk_plan_sets_paragraph_id_paragraphs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_plan_sets')),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('plan_sets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_plan_sets_novel_id'), ['novel_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_plan_sets_paragraph_id'), ['paragraph_id'], unique=False)



def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('plan_sets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_plan_sets_paragraph_id'))
        batch_op.drop_index(batch_op.f('ix_plan_sets_novel_id'))

    op.drop_table('plan_sets')
    with op.batch_alter_table('embeddings', schema=None) as batch_op:
        batch_op.drop_index('ix_embeddings_novel_embedder')

    op.drop_table('embeddings')
    with op.batch_alter_table('state_snapshots', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_state_snapshots_novel_id'))

    op.drop_table('state_snapshots')
    with op.batch_alter_table('short_term_memories', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_short_term_memories_novel_id'))

    op.drop_table('short_term_memories')
    with op.batch_alter_table('revisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_revisions_novel_id'))

    op.drop_table('revisions')
    with op.batch_alter_table('paragraphs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_paragraphs_novel_id'))

    op.drop_table('paragraphs')
    with op.batch_alter_table('lore_entries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_lore_entries_novel_id'))

    op.drop_table('lore_entries')
    op.drop_table('novels')
