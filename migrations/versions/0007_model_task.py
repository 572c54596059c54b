"""the task metric of each model

Revision ID: 7a3c9e2d4f10
Revises: 6d2f4b8e1c30
Create Date: 2026-12-08 10:00:00

Each model names the metric its sessions are gated on (engine/metrics.py's TASKS); models
uploaded before keep today's rule, `auto`.
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "7a3c9e2d4f10"
down_revision = "6d2f4b8e1c30"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("task", sa.String(length=32), server_default="auto", nullable=False))


def downgrade():
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("task")
