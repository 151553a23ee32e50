"""Create the analyses table and its owner index.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """The first schema: one row per answered image."""
    op.create_table(
        "analyses",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("predictions", sa.JSON, nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("image_format", sa.String(16), nullable=False),
        sa.Column("image_width", sa.Integer, nullable=False),
        sa.Column("image_height", sa.Integer, nullable=False),
        sa.Column("image_bytes", sa.Integer, nullable=False),
        sa.Column("decode_ms", sa.Float, nullable=False),
        sa.Column("preprocess_ms", sa.Float, nullable=False),
        sa.Column("triton_ms", sa.Float, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
    )
    op.create_index("ix_analyses_owner_id", "analyses", ["owner", "id"])


def downgrade() -> None:
    """Drop the table (its index goes with it)."""
    op.drop_table("analyses")
