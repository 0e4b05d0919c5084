"""metrics.split up to 32 characters: the trainer's splits of a second training pass ('baseline_train_epoch', 20
characters, written by evaluation.compare_baseline) did not fit the 16 of 0001 on PostgreSQL.

Revision ID: 0006_metric_split_length
Revises: 0005_platform
Create Date: 2026-12-02 05:00:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0006_metric_split_length"
down_revision: Union[str, Sequence[str], None] = "0005_platform"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.alter_column("split", existing_type=sa.String(length=16), type_=sa.String(length=32), existing_nullable=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.alter_column("split", existing_type=sa.String(length=32), type_=sa.String(length=16), existing_nullable=False)
