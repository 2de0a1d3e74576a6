"""Cluster records: asynchronous job fields, projects, chat sessions and messages, provider
configs; composite indexes for the newest-first listings (keyset pagination).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # jobs: progress, step, result, cancellation, heartbeat (all addable in place on SQLite)
    op.add_column("jobs", sa.Column("progress", sa.Float(), nullable=False,
                                    server_default=sa.text("0")))
    op.add_column("jobs", sa.Column("step", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("result", sa.JSON(), nullable=True))
    op.add_column("jobs", sa.Column("cancel_requested", sa.Boolean(), nullable=False,
                                    server_default=sa.false()))
    op.add_column("jobs", sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("jobs", sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    # single-column indexes replaced by ones that also serve the ORDER BY created_at, id
    op.drop_index("ix_jobs_status", table_name="jobs")
    op.drop_index("ix_jobs_project", table_name="jobs")
    op.drop_index("ix_jobs_created_at", table_name="jobs")
    op.create_index("ix_jobs_created", "jobs", ["created_at", "id"])
    op.create_index("ix_jobs_status_created", "jobs", ["status", "created_at", "id"])
    op.create_index("ix_jobs_project_created", "jobs", ["project", "created_at", "id"])
    op.drop_index("ix_assets_project", table_name="assets")
    op.create_index("ix_assets_project_created", "assets", ["project", "created_at", "id"])

    projects = op.create_table(
        "projects",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_projects_created", "projects", ["created_at", "id"])
    # the gateway's default project (graphs.ingress.IngressConfig.project) exists from the start
    op.bulk_insert(projects, [{"id": "default", "name": "Default", "description": None,
                               "settings": {}, "created_at": datetime.now(timezone.utc)}])

    op.create_table(
        "sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("title", sa.String(200), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_sessions_project_updated", "sessions", ["project", "updated_at", "id"])
    op.create_index("ix_sessions_updated", "sessions", ["updated_at"])

    op.create_table(
        "messages",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(64),
                  sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("image_ids", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_messages_session", "messages", ["session_id", "id"])

    op.create_table(
        "provider_configs",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_provider_configs_kind", "provider_configs", ["kind"])


def downgrade() -> None:
    op.drop_table("provider_configs")
    op.drop_table("messages")
    op.drop_table("sessions")
    op.drop_table("projects")
    op.drop_index("ix_assets_project_created", table_name="assets")
    op.create_index("ix_assets_project", "assets", ["project"])
    op.drop_index("ix_jobs_project_created", table_name="jobs")
    op.drop_index("ix_jobs_status_created", table_name="jobs")
    op.drop_index("ix_jobs_created", table_name="jobs")
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    op.create_index("ix_jobs_project", "jobs", ["project"])
    op.create_index("ix_jobs_status", "jobs", ["status"])
    with op.batch_alter_table("jobs") as batch:  # SQLite drops columns by copying the table
        for column in ("updated_at", "heartbeat_at", "cancel_requested", "result", "step",
                       "progress"):
            batch.drop_column(column)
