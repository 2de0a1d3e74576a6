"""Usage accounting: hourly sums per project, key, route, model, provider, status and
deployment; a model-seconds/day limit per API key.

Revision ID: 0004_usage
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_usage"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage",
        sa.Column("bucket", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("project", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("route", sa.String(200), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("provider", sa.String(64), primary_key=True),
        sa.Column("status", sa.Integer(), primary_key=True),
        sa.Column("deployment", sa.String(64), primary_key=True),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("videos", sa.Integer(), nullable=False),
        sa.Column("pixels", sa.BigInteger(), nullable=False),
        sa.Column("model_seconds", sa.Float(), nullable=False),
        sa.Column("tokens_in", sa.Integer(), nullable=False),
        sa.Column("tokens_out", sa.Integer(), nullable=False),
    )
    op.create_index("ix_usage_project_bucket", "usage", ["project", "bucket"])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("model_seconds_per_day", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("model_seconds_per_day")
    op.drop_index("ix_usage_project_bucket", table_name="usage")
    op.drop_table("usage")
