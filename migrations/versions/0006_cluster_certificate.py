"""cluster certificate

Revision ID: 0006
Revises: 0005


"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "cluster_certificate",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("cert_pem", sa.Text(), nullable=False),
        sa.Column("key_pem", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cluster_certificate")),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("cluster_certificate")
