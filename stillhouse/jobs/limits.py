"""A tenant's live-job limit as the life cycle sees it: how many jobs (queued, running, cancelling) the tenant may
have, how many it has, and the tenant lock that serialises the creations that must not race past the limit.

The API's job creation (``app.auth.limits.check_job_slot``, 429 ``too_many_jobs``) and the sweep scheduler (which
starts a trial only while its tenant is under the limit, ``stillhouse.sweeps.scheduler``) both count here, so a
trial is a job like any other for the limit.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from stillhouse.jobs.states import LIVE
from stillhouse.models import Job, Tenant, utcnow
from stillhouse.settings import Settings


def lock_tenant_row(session: Session, tenant_id: str) -> Tenant | None:
    """Take the tenant's lock for the rest of the transaction (``UPDATE tenants SET updated_at=…``: the row lock on
    PostgreSQL, the database's write lock on SQLite, held until commit or rollback) and return its fresh row; None
    (nothing locked) when the tenant does not exist."""
    res = session.execute(update(Tenant).where(Tenant.id == tenant_id).values(updated_at=utcnow())
                          .execution_options(synchronize_session=False))
    if res.rowcount != 1:
        return None
    return session.get(Tenant, tenant_id, populate_existing=True)


def job_limit(tenant: Tenant, settings: Settings) -> int:
    """Most live jobs (queued, running, cancelling) the tenant may have: its ``max_running_jobs``, else the service's
    ``STILLHOUSE_MAX_RUNNING_JOBS_PER_TENANT``."""
    return tenant.max_running_jobs or settings.max_running_jobs_per_tenant


def live_jobs(session: Session, tenant_id: str) -> int:
    """How many of the tenant's jobs (sweep trials included) are queued, running or cancelling."""
    return session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id, Job.status.in_(LIVE))) or 0


def free_job_slots(session: Session, tenant_id: str, settings: Settings) -> int:
    """Live jobs the tenant may still add (0 at or over its limit, 0 for an unknown tenant). Exact only under
    ``lock_tenant_row``; without it, a cheap estimate."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        return 0
    return max(0, job_limit(tenant, settings) - live_jobs(session, tenant_id))
