"""packs url: where the zoo's pack files (and derived-table files) live when not in <root>/packs, e.g.
s3://bucket/prefix; recorded so that a later open finds them (credentials are never stored)

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("catalog_state") as batch:
        batch.add_column(sa.Column("packs_url", sa.String(length=2000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("catalog_state") as batch:
        batch.drop_column("packs_url")
