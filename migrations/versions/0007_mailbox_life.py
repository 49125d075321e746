"""mailbox life: replies and threads, the delivery ledger, acknowledged announcements

Revision ID: 0007
Revises: 0006

`messages.in_reply_to` (the message a reply answers) and `messages.thread_id` (its thread's
first message; NULL for a message that starts its own thread); `messages.require_ack`;
`mailbox.delivered_at` and `mailbox.acked_at` (the sender's ledger); `users.read_receipts`;
`mailbox.archived_at` and the `retention_rules` table (retention per kind).
Every new column is NULL or a server default for an ordinary send, so the group commit writes
nothing more for them. Columns are added and dropped
with plain ALTER TABLE (no batch copy), so SQLite keeps the search triggers on `messages`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("in_reply_to", sa.BigInteger(), nullable=True))
    op.add_column("messages", sa.Column("thread_id", sa.BigInteger(), nullable=True))
    op.create_index(op.f("ix_messages_thread_id"), "messages", ["thread_id"], unique=False)
    op.add_column(
        "messages",
        sa.Column("require_ack", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column("mailbox", sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("mailbox", sa.Column("acked_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "users",
        sa.Column("read_receipts", sa.Boolean(), server_default=sa.true(), nullable=False),
    )
    op.add_column("mailbox", sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "retention_rules",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("days", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", name=op.f("pk_retention_rules")),
    )


def downgrade() -> None:
    op.drop_table("retention_rules")
    op.drop_column("mailbox", "archived_at")
    op.drop_column("users", "read_receipts")
    op.drop_column("mailbox", "acked_at")
    op.drop_column("mailbox", "delivered_at")
    op.drop_column("messages", "require_ack")
    op.drop_index(op.f("ix_messages_thread_id"), table_name="messages")
    op.drop_column("messages", "thread_id")
    op.drop_column("messages", "in_reply_to")
