"""stored files, browser session nonces, the criteria version of each session

Revision ID: 6d2f4b8e1c30
Revises: 5c1e0d7a9b21
Create Date: 2026-12-01 22:00:00

Stored files become rows so that adding and removing one can be locked against each
other (a delete must never remove bytes another model or artifact still needs).
"""

import secrets

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "6d2f4b8e1c30"
down_revision = "5c1e0d7a9b21"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "stored_files",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("removed_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_stored_files")),
    )
    # Every hash something refers to today gets its row (size where it is known).
    op.execute("""
        INSERT INTO stored_files (sha256, size_bytes, created_at)
        SELECT sha256, MAX(size_bytes), MIN(created_at) FROM (
            SELECT sha256, size_bytes, created_at FROM models
            UNION ALL SELECT eval_data_sha256, NULL, created_at FROM models
                WHERE eval_data_sha256 IS NOT NULL
            UNION ALL SELECT artifact_sha256, artifact_size_bytes, created_at
                FROM optimization_sessions WHERE artifact_sha256 IS NOT NULL
        ) AS refs GROUP BY sha256
    """)
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_models_eval_data_sha256"), ["eval_data_sha256"], unique=False)
    with op.batch_alter_table("optimization_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("criteria_version", sa.Integer(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_optimization_sessions_artifact_sha256"), ["artifact_sha256"], unique=False
        )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("session_nonce", sa.String(length=32), nullable=True))
    users = sa.table("users", sa.column("id", sa.Integer), sa.column("session_nonce", sa.String))
    bind = op.get_bind()
    for (user_id,) in bind.execute(sa.select(users.c.id)).all():
        bind.execute(users.update().where(users.c.id == user_id).values(session_nonce=secrets.token_hex(16)))
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.alter_column("session_nonce", existing_type=sa.String(length=32), nullable=False)


def downgrade():
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("session_nonce")
    with op.batch_alter_table("optimization_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_optimization_sessions_artifact_sha256"))
        batch_op.drop_column("criteria_version")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_models_eval_data_sha256"))
    op.drop_table("stored_files")
