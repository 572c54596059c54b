"""indexes for the dashboard's recently finished sessions

Revision ID: 9c5e2a7b3d41
Revises: 8b4d1f6a2e57
Create Date: 2026-12-03 07:40:00

The dashboard lists the newest finished sessions by completed_at; without an index on it
every dashboard sorted all finished sessions.
"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "9c5e2a7b3d41"
down_revision = "8b4d1f6a2e57"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("optimization_sessions", schema=None) as batch_op:
        batch_op.create_index("ix_sessions_completed", ["completed_at", "id"], unique=False)
        batch_op.create_index("ix_sessions_owner_completed", ["owner_id", "completed_at"], unique=False)


def downgrade():
    with op.batch_alter_table("optimization_sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_sessions_owner_completed")
        batch_op.drop_index("ix_sessions_completed")
