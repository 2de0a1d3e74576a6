"""Gallery search: each asset's analysis (caption, description, when) and its tags, one row
per (asset, tag) indexed by (project, tag) so a tag filter is an index range scan on SQLite
and Postgres alike (a JSON array would need a dialect's own JSON operators and no index).

Revision ID: 0008_asset_tags
Revises: 0007_datasets
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_asset_tags"
down_revision = "0007_datasets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("assets") as batch:
        batch.add_column(sa.Column("caption", sa.Text(), nullable=True))
        batch.add_column(sa.Column("description", sa.Text(), nullable=True))
        batch.add_column(sa.Column("analyzed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "asset_tags",
        sa.Column("asset_id", sa.String(64), sa.ForeignKey("assets.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("tag", sa.String(64), primary_key=True),
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
    )
    op.create_index("ix_asset_tags_project_tag", "asset_tags", ["project", "tag", "asset_id"])


def downgrade() -> None:
    op.drop_index("ix_asset_tags_project_tag", table_name="asset_tags")
    op.drop_table("asset_tags")
    with op.batch_alter_table("assets") as batch:
        batch.drop_column("analyzed_at")
        batch.drop_column("description")
        batch.drop_column("caption")
