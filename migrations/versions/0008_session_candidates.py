"""a search's kept candidates and their stored files

Revision ID: 8b4d1f6a2e57
Revises: 7a3c9e2d4f10
Create Date: 2026-12-02 06:00:00

A search session keeps several candidate models (its trade-off front); each is a stored
file that must outlive the models' deletion like a session's artifact does.
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "8b4d1f6a2e57"
down_revision = "7a3c9e2d4f10"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "session_candidates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("candidate_index", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["optimization_sessions.id"],
            name=op.f("fk_session_candidates_session_id_optimization_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_session_candidates")),
        sa.UniqueConstraint("session_id", "candidate_index", name=op.f("uq_session_candidates_session_id")),
    )
    with op.batch_alter_table("session_candidates", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_session_candidates_sha256"), ["sha256"], unique=False)


def downgrade():
    with op.batch_alter_table("session_candidates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_session_candidates_sha256"))
    op.drop_table("session_candidates")
