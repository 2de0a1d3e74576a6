"""Saved workflows and presets per project (one table, `kind` tells them apart), and each
asset's recipe (how it was made: GET /v1/assets/{id}/recipe).

Revision ID: 0005_library
Revises: 0004_usage
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_library"
down_revision = "0004_usage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "library_items",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_library_items_project_kind_created", "library_items",
                    ["project", "kind", "created_at", "id"])
    with op.batch_alter_table("assets") as batch:
        batch.add_column(sa.Column("recipe", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("assets") as batch:
        batch.drop_column("recipe")
    op.drop_index("ix_library_items_project_kind_created", table_name="library_items")
    op.drop_table("library_items")
