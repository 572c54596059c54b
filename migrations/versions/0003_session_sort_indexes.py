"""indexes for the session list's sort orders and the dashboard

Revision ID: afc1453c9480
Revises: 96086a4a7b68
Create Date: 2026-11-27 02:20:54.206232

"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "afc1453c9480"
down_revision = "96086a4a7b68"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("optimization_sessions", schema=None) as batch_op:
        batch_op.create_index("ix_sessions_created", ["created_at", "id"], unique=False)
        batch_op.create_index("ix_sessions_size", ["size_reduction_percent", "id"], unique=False)
        batch_op.create_index("ix_sessions_speed", ["speed_improvement_percent", "id"], unique=False)
        batch_op.create_index("ix_sessions_updated", ["updated_at", "id"], unique=False)
        batch_op.create_index(
            "ix_sessions_status_results",
            ["status", "size_reduction_percent", "speed_improvement_percent"],
            unique=False,
        )
        batch_op.create_index("ix_sessions_owner_status", ["owner_id", "status"], unique=False)


def downgrade():
    with op.batch_alter_table("optimization_sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_sessions_owner_status")
        batch_op.drop_index("ix_sessions_status_results")
        batch_op.drop_index("ix_sessions_updated")
        batch_op.drop_index("ix_sessions_speed")
        batch_op.drop_index("ix_sessions_size")
        batch_op.drop_index("ix_sessions_created")
