"""metrics.split widened from 16 to 64 characters: the second training passes of a job log under prefixed splits
('baseline_train_epoch' is 20 characters, 'prune_train_epoch' 17), which PostgreSQL refused (StringDataRightTruncation)
once the baseline became the default for labelled classification (SQLite does not enforce the length).

Revision ID: 0006_metric_split_width
Revises: 0005_platform
Create Date: 2026-12-02 04:40:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0006_metric_split_width"
down_revision: Union[str, Sequence[str], None] = "0005_platform"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.alter_column("split", existing_type=sa.String(length=16), type_=sa.String(length=64), existing_nullable=False)


def downgrade() -> None:
    """Downgrade schema (fails while a stored split is longer than 16 characters)."""
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.alter_column("split", existing_type=sa.String(length=64), type_=sa.String(length=16), existing_nullable=False)
