"""derived tables: named learner outputs (predictions, embeddings, statistics) stored as Parquet files

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "derived_tables",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("files", sa.Text(), nullable=False),
        sa.Column("column_types", sa.Text(), nullable=False),
        sa.Column("n_rows", sa.BigInteger(), nullable=False),
        sa.Column("nbytes", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("produced_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["produced_by"], ["models.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("derived_tables", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_derived_tables_produced_by"), ["produced_by"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("derived_tables", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_derived_tables_produced_by"))
    op.drop_table("derived_tables")
