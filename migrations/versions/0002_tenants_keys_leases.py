"""Tenants and API keys; tenant_id on files and jobs; job leases, enqueue time, hand-backs, idempotency keys.

Existing files and jobs are given to the built-in ``default`` tenant (the one auth-off requests act as).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 13:40:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("max_running_jobs", sa.Integer(), nullable=True),
        sa.Column("max_storage_bytes", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )
    op.execute(sa.text("INSERT INTO tenants (id, name, created_at, updated_at) "
                       "VALUES ('default', 'default', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=True),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_api_keys_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_tenant_id"), ["tenant_id"], unique=False)

    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tenant_id", sa.String(length=40), nullable=False, server_default="default"))
        batch_op.create_index(batch_op.f("ix_files_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_foreign_key(batch_op.f("fk_files_tenant_id_tenants"), "tenants", ["tenant_id"], ["id"])

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tenant_id", sa.String(length=40), nullable=False, server_default="default"))
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("request_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("handbacks", sa.Integer(), nullable=False, server_default="0"))
        batch_op.create_index(batch_op.f("ix_jobs_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_foreign_key(batch_op.f("fk_jobs_tenant_id_tenants"), "tenants", ["tenant_id"], ["id"])
        batch_op.create_unique_constraint(batch_op.f("uq_jobs_tenant_id"), ["tenant_id", "idempotency_key"])
    # jobs created before leases existed were all sent to the broker
    op.execute(sa.text("UPDATE jobs SET enqueued_at = created_at"))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_jobs_tenant_id"), type_="unique")
        batch_op.drop_constraint(batch_op.f("fk_jobs_tenant_id_tenants"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_jobs_tenant_id"))
        for col in ("handbacks", "enqueued_at", "lease_expires_at", "lease_owner", "request_sha256", "idempotency_key", "tenant_id"):
            batch_op.drop_column(col)
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_files_tenant_id_tenants"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_files_tenant_id"))
        batch_op.drop_column("tenant_id")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_tenant_id"))
    op.drop_table("api_keys")
    op.drop_table("tenants")
