"""group roles and their privileges on PostgreSQL (speakerops.roles; issue #8)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21

Creates the group roles ``speakerops_operator|technician|product_owner|admin`` (if missing; they
are cluster-wide) and GRANTs each its privileges on every table (``speakerops.roles.
TABLE_PRIVILEGES``). A later migration that adds a table calls ``apply_grants`` again. SQLite:
nothing to do (the local user is admin).
"""
from alembic import op

from speakerops.roles import ROLES, apply_grants, group_role

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    apply_grants(op.get_bind())


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    for role in ROLES:  # the roles stay (other databases of the cluster may use them)
        op.execute(f'REVOKE ALL ON ALL TABLES IN SCHEMA public FROM "{group_role(role)}"')
        op.execute(f'REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM "{group_role(role)}"')
