"""The history table, as the Alembic migrations create it (queries use this declaration)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

#: One row per answered image. Never the image: its SHA-256, format, size and pixel count.
analyses = Table(
    "analyses",
    metadata,
    Column("id", String(26), primary_key=True),  # gateway.history.ids: sorts by time
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("day", Date, nullable=False),  # created_at's UTC date, for per-day counts
    Column("owner", String(64), nullable=False),  # HMAC-SHA256 of the API key, hex
    Column("model", String(128), nullable=False),
    Column("version", String(32), nullable=False),
    Column("label", Text, nullable=False),
    Column("confidence", Float, nullable=False),
    Column("predictions", JSON, nullable=False),  # [{"label": ..., "confidence": ...}, ...]
    Column("image_sha256", String(64), nullable=False),
    Column("image_format", String(16), nullable=False),
    Column("image_width", Integer, nullable=False),
    Column("image_height", Integer, nullable=False),
    Column("image_bytes", Integer, nullable=False),
    Column("decode_ms", Float, nullable=False),
    Column("preprocess_ms", Float, nullable=False),
    Column("triton_ms", Float, nullable=False),
    Column("request_id", String(128), nullable=False),
    # A caller's rows, newest first, is every listing's access path.
    Index("ix_analyses_owner_id", "owner", "id"),
)
