"""Registered LoRA adapters (POST /v1/models/loras): one row per adapter, its file in the
asset store, provenance as JSON.

Revision ID: 0006_loras
Revises: 0005_library
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_loras"
down_revision = "0005_library"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "loras",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("base", sa.String(128), nullable=False),
        sa.Column("store", sa.String(32), nullable=False),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("trigger_words", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("default_weight", sa.Float(), nullable=False),
        sa.Column("preview_asset", sa.String(512), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("loras")
