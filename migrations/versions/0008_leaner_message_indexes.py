"""leaner message indexes: no second index on sender_id; thread_id indexed for replies only

Revision ID: 0008
Revises: 0007

Every send inserted into four B-trees of `messages` besides the search index: the table, the
(sender_id, client_msg_id) unique index, an index on sender_id alone and one on thread_id.
The unique index already serves every lookup by sender (sender_id leads it, and PostgreSQL's
foreign-key checks use it the same way), and thread_id is NULL for every message that is not a
reply. Dropping the first and making the second partial (`WHERE thread_id IS NOT NULL`: a
query for `thread_id = X` still uses it, on SQLite and PostgreSQL) saves two index inserts per
message: ~20 % of the group commit's CPU on SQLite (docs/performance.md).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_REPLIES = sa.text("thread_id IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_messages_sender_id", table_name="messages")
    op.drop_index("ix_messages_thread_id", table_name="messages")
    op.create_index(
        "ix_messages_thread_id",
        "messages",
        ["thread_id"],
        unique=False,
        sqlite_where=_REPLIES,
        postgresql_where=_REPLIES,
    )


def downgrade() -> None:
    op.drop_index("ix_messages_thread_id", table_name="messages")
    op.create_index("ix_messages_thread_id", "messages", ["thread_id"], unique=False)
    op.create_index("ix_messages_sender_id", "messages", ["sender_id"], unique=False)
