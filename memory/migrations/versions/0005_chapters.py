"""Chapters, chapter summaries and the synopsis; every existing novel's paragraphs put into one chapter.

- `chapters` (title, position, closed, summary_stale, version), `chapter_summaries` and `synopses` (versioned
  like `short_term_memories`).
- `paragraphs.chapter_id` (nullable foreign key; memory.store fills it and deletes a chapter's paragraphs
  itself). SQLite adds it with a plain
  `ALTER TABLE ... ADD COLUMN ... REFERENCES`, not a batch rebuild: rebuilding `paragraphs` would drop the
  full-text triggers of 0003 and, with foreign keys on, cascade-delete every embedding.
- Each novel gets "Chapter 1" holding all its paragraphs, and the paragraph rows inside its history (revisions)
  get the same `chapter_id`, so undoing an edit made before this migration still matches the row it restores.

memory.db.init_db backs the database up before running this, as before every migration.

Revision ID: 0005
Revises: 0004 (paragraph alternatives)
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: Union[str, Sequence[str], None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

FIRST_CHAPTER_TITLE = "Chapter 1"


def _versioned_table(name: str, *extra: sa.Column) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("novel_id", sa.Integer(), nullable=False),
        *extra,
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["novel_id"], ["novels.id"], name=op.f(f"fk_{name}_novel_id_novels"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{name}")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f(f"ix_{name}_novel_id"), name, ["novel_id"])


def upgrade() -> None:
    op.create_table(
        "chapters",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("novel_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("closed", sa.Boolean(), nullable=False),
        sa.Column("summary_stale", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["novel_id"], ["novels.id"], name=op.f("fk_chapters_novel_id_novels"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chapters")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_chapters_novel_id"), "chapters", ["novel_id"])
    op.create_index("ix_chapters_novel_position", "chapters", ["novel_id", "position"])
    _versioned_table(
        "chapter_summaries",
        sa.Column("chapter_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["chapter_id"], ["chapters.id"], name="fk_chapter_summaries_chapter_id_chapters",
                                ondelete="CASCADE"),
        sa.UniqueConstraint("chapter_id", "version", name="uq_chapter_summaries_chapter_id"),
    )
    op.create_index(op.f("ix_chapter_summaries_chapter_id"), "chapter_summaries", ["chapter_id"])
    _versioned_table("synopses", sa.UniqueConstraint("novel_id", "version", name="uq_synopses_novel_id"))

    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE paragraphs ADD COLUMN chapter_id INTEGER "
                   "CONSTRAINT fk_paragraphs_chapter_id_chapters REFERENCES chapters (id)")
    else:
        op.add_column("paragraphs", sa.Column("chapter_id", sa.Integer(), nullable=True))
        op.create_foreign_key("fk_paragraphs_chapter_id_chapters", "paragraphs", "chapters", ["chapter_id"],
                              ["id"])
    op.create_index(op.f("ix_paragraphs_chapter_id"), "paragraphs", ["chapter_id"])
    _one_chapter_per_novel()


def _one_chapter_per_novel() -> None:
    bind = op.get_bind()
    novels = sa.table("novels", sa.column("id", sa.Integer), sa.column("created_at", sa.DateTime))
    chapters = sa.table("chapters", sa.column("id", sa.Integer), sa.column("novel_id", sa.Integer),
                        sa.column("position", sa.Integer), sa.column("title", sa.Text),
                        sa.column("closed", sa.Boolean), sa.column("summary_stale", sa.Boolean),
                        sa.column("version", sa.Integer), sa.column("created_at", sa.DateTime),
                        sa.column("updated_at", sa.DateTime))
    paragraphs = sa.table("paragraphs", sa.column("novel_id", sa.Integer), sa.column("chapter_id", sa.Integer),
                          sa.column("updated_at", sa.DateTime))
    # Plain JSON here, not SafeJSON: the stored text (PostgreSQL's NUL escapes included) is read and written back
    # as it is, only gaining a key.
    revisions = sa.table("revisions", sa.column("id", sa.Integer), sa.column("novel_id", sa.Integer),
                         sa.column("changes", sa.JSON))
    for novel_id, created_at in bind.execute(sa.select(novels.c.id, novels.c.created_at)).all():
        chapter_id = bind.execute(chapters.insert().values(
            novel_id=novel_id, position=1, title=FIRST_CHAPTER_TITLE, closed=False, summary_stale=False, version=1,
            created_at=created_at, updated_at=created_at).returning(chapters.c.id)).scalar_one()
        # A move into a chapter is not an edit: updated_at is set to itself.
        bind.execute(paragraphs.update().where(paragraphs.c.novel_id == novel_id)
                     .values(chapter_id=chapter_id, updated_at=paragraphs.c.updated_at))
        rows = bind.execute(sa.select(revisions.c.id, revisions.c.changes)
                            .where(revisions.c.novel_id == novel_id)).all()
        for revision_id, changes in rows:
            if not any(change.get("entity") == "paragraphs" for change in changes or ()):
                continue
            for change in changes:
                if change.get("entity") != "paragraphs":
                    continue
                for side in ("before", "after"):
                    if change.get(side) is not None:
                        change[side]["chapter_id"] = chapter_id
            bind.execute(revisions.update().where(revisions.c.id == revision_id).values(changes=changes))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite can drop a column used by a foreign key only by rebuilding `paragraphs`, which with foreign keys
        # on would cascade-delete the embeddings; the backup init_db took before the upgrade is the way back.
        raise NotImplementedError("Migration 0005 cannot be undone on SQLite: restore the backup taken before it "
                                  "(python -m app restore).")
    op.drop_index(op.f("ix_paragraphs_chapter_id"), table_name="paragraphs")
    op.drop_constraint("fk_paragraphs_chapter_id_chapters", "paragraphs", type_="foreignkey")
    op.drop_column("paragraphs", "chapter_id")
    op.drop_table("synopses")
    op.drop_table("chapter_summaries")
    op.drop_table("chapters")
