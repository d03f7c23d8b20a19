"""The ledger: events, their movements, and the levels, items, reservations, orders derived.

Revision ID: 0001
Revises:
Create Date: 2026-12-03

Written out in full (no model imports) so it keeps building the same schema
whatever the models become later. Table design: see flashstock/db/models.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
    )


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _version() -> list[sa.Column[int]]:
    return [
        sa.Column("ver_ms", sa.BigInteger(), nullable=False),
        sa.Column("ver_seq", sa.BigInteger(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "ledger_events",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("stream_ms", sa.BigInteger(), nullable=False),
        sa.Column("stream_seq", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("at", _ts(), nullable=True),
        sa.Column("reservation_id", sa.Text(), nullable=True),
        sa.Column("order_id", sa.Text(), nullable=True),
        sa.Column("customer_id", sa.Text(), nullable=True),
        sa.Column("ref", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("payload", _json(), nullable=False),
        sa.Column(
            "recorded_at", _ts(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_events")),
        sa.UniqueConstraint(
            "partition",
            "stream_ms",
            "stream_seq",
            name=op.f("uq_ledger_events_partition_stream_ms_stream_seq"),
        ),
    )
    for col in ("customer_id", "order_id", "reservation_id"):
        op.create_index(op.f(f"ix_ledger_events_{col}"), "ledger_events", [col])

    op.create_table(
        "ledger_movements",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("line_no", sa.SmallInteger(), nullable=False),
        sa.Column("sku", sa.Text(), nullable=False),
        sa.Column("location", sa.Text(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("backordered", sa.BigInteger(), nullable=False),
        *(
            sa.Column(name, sa.BigInteger(), nullable=False)
            for name in (
                "d_on_hand",
                "d_reserved",
                "d_committed",
                "d_safety",
                "on_hand",
                "reserved",
                "committed",
                "safety",
            )
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["ledger_events.id"],
            name=op.f("fk_ledger_movements_event_id_ledger_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_movements")),
        sa.UniqueConstraint(
            "event_id", "line_no", name=op.f("uq_ledger_movements_event_id_line_no")
        ),
    )
    op.create_index(
        op.f("ix_ledger_movements_sku_location"), "ledger_movements", ["sku", "location"]
    )

    op.create_table(
        "levels",
        sa.Column("sku", sa.Text(), nullable=False),
        sa.Column("location", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("on_hand", sa.BigInteger(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.Column("committed", sa.BigInteger(), nullable=False),
        sa.Column("safety", sa.BigInteger(), nullable=False),
        *_version(),
        sa.Column("updated_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("sku", "location", name=op.f("pk_levels")),
    )

    op.create_table(
        "items",
        sa.Column("sku", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("backorder", sa.String(length=16), nullable=True),
        sa.Column("backorder_limit", sa.BigInteger(), nullable=True),
        sa.Column("restock_date", sa.Text(), nullable=True),
        sa.Column("ships_in_days", sa.Integer(), nullable=True),
        sa.Column("low_stock_threshold", sa.BigInteger(), nullable=True),
        sa.Column("per_customer_limit", sa.BigInteger(), nullable=True),
        sa.Column("locations", _json(), nullable=True),
        sa.Column("policy", _json(), nullable=True),
        *_version(),
        sa.Column("updated_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("sku", name=op.f("pk_items")),
    )

    op.create_table(
        "reservations",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expires_at", _ts(), nullable=True),
        sa.Column("lines", _json(), nullable=True),
        sa.Column("order_id", sa.Text(), nullable=True),
        sa.Column("created_at", _ts(), nullable=True),
        sa.Column("updated_at", _ts(), nullable=True),
        *_version(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reservations")),
    )
    op.create_index(op.f("ix_reservations_customer_id"), "reservations", ["customer_id"])
    op.create_index(
        op.f("ix_reservations_status_expires_at"), "reservations", ["status", "expires_at"]
    )

    op.create_table(
        "orders",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("reservation_id", sa.Text(), nullable=True),
        sa.Column("customer_id", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("lines", _json(), nullable=False),
        sa.Column("created_at", _ts(), nullable=True),
        sa.Column("updated_at", _ts(), nullable=True),
        *_version(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
    )
    op.create_index(op.f("ix_orders_reservation_id"), "orders", ["reservation_id"])
    op.create_index(op.f("ix_orders_status"), "orders", ["status"])


def downgrade() -> None:
    op.drop_table("orders")
    op.drop_table("reservations")
    op.drop_table("items")
    op.drop_table("levels")
    op.drop_table("ledger_movements")
    op.drop_table("ledger_events")
