"""largest-first sort indexes for PostgreSQL

Revision ID: 5c1e0d7a9b21
Revises: 3a27db8bcb49
Create Date: 2026-11-27 05:20:00

PostgreSQL puts NULLs first when it reads an ascending index backwards, so the
session list's "largest size reduction first, no result last" sorted all rows.
SQLite needs nothing: its NULLs sort smallest.
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "5c1e0d7a9b21"
down_revision = "3a27db8bcb49"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_sessions_size_desc": "size_reduction_percent",
    "ix_sessions_speed_desc": "speed_improvement_percent",
}


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, column in INDEXES.items():
        op.create_index(
            name, "optimization_sessions", [sa.text(f"{column} DESC NULLS LAST"), sa.text("id DESC")]
        )


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in INDEXES:
        op.drop_index(name, table_name="optimization_sessions")
