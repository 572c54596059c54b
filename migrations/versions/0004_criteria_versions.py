"""criteria versions

Revision ID: 3a27db8bcb49
Revises: afc1453c9480
Create Date: 2026-11-27 02:30:43.050091

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "3a27db8bcb49"
down_revision = "afc1453c9480"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "criteria_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.Column("created_by_name", sa.String(length=64), nullable=True),
        sa.Column("reverted_from", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by_id"],
            ["users.id"],
            name=op.f("fk_criteria_versions_created_by_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_criteria_versions")),
        sa.UniqueConstraint("version", name=op.f("uq_criteria_versions_version")),
    )


def downgrade():
    op.drop_table("criteria_versions")
