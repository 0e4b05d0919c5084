"""Per-tenant limits: live jobs (429 ``too_many_jobs``) and stored bytes (413 ``storage_quota_exceeded``).

A tenant's ``max_running_jobs`` / ``max_storage_bytes`` override the service-wide
``STILLHOUSE_MAX_RUNNING_JOBS_PER_TENANT`` / ``STILLHOUSE_MAX_STORAGE_BYTES_PER_TENANT``.

Checks that must not race (two job creations of one tenant both seeing one free slot) run after
``lock_tenant``: an ``UPDATE tenants SET updated_at=…`` first in the transaction, which holds the tenant's row
lock on PostgreSQL and the database's write lock on SQLite until commit or rollback, so a tenant's creations
are serialised while other tenants' proceed (PostgreSQL). ``job_limit``, ``live_jobs`` and the lock itself live in
``stillhouse.jobs.limits`` (the sweep scheduler counts its trials there too) and are re-exported here.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import PayloadTooLarge, TooManyRequests, Unauthorized
from stillhouse.jobs.limits import job_limit, live_jobs, lock_tenant_row
from stillhouse.jobs.states import RUNNING
from stillhouse.models import Artifact, File, Job, Tenant
from stillhouse.settings import Settings

__all__ = ["DEFAULT_RETRY_AFTER_S", "lock_tenant", "job_limit", "storage_limit", "live_jobs", "storage_by_kind", "storage_used",
           "retry_after_s", "check_job_slot", "quota_error", "remaining_storage", "check_storage"]

DEFAULT_RETRY_AFTER_S = 30
"""Retry-After (seconds) of a 429 when no running job of the tenant has an ETA."""


def lock_tenant(session: Session, tenant_id: str) -> Tenant:
    """Take the tenant's lock for the rest of the transaction (see the module doc) and return its fresh row.

    Raises Unauthorized (401) if the tenant no longer exists (its key outlived it)."""
    tenant = lock_tenant_row(session, tenant_id)
    if tenant is None:
        session.rollback()
        raise Unauthorized(f"tenant {tenant_id!r} does not exist", invalid_token=True)
    return tenant


def storage_limit(tenant: Tenant, settings: Settings) -> int:
    """Most bytes the tenant may store (uploads + artifacts)."""
    return tenant.max_storage_bytes or settings.max_storage_bytes_per_tenant


def storage_by_kind(session: Session, tenant_id: str) -> tuple[int, int]:
    """(bytes of the tenant's uploaded files, bytes of its jobs' published artifacts)."""
    files = session.scalar(select(func.coalesce(func.sum(File.bytes), 0)).where(File.tenant_id == tenant_id)) or 0
    artifacts = session.scalar(select(func.coalesce(func.sum(Artifact.bytes), 0)).join(Job, Job.id == Artifact.job_id)
                               .where(Job.tenant_id == tenant_id)) or 0
    return int(files), int(artifacts)


def storage_used(session: Session, tenant_id: str) -> int:
    """Bytes the tenant stores: its uploaded files plus its jobs' published artifacts."""
    return sum(storage_by_kind(session, tenant_id))


def retry_after_s(session: Session, tenant_id: str) -> int:
    """Seconds to suggest in Retry-After: the smallest training ETA of the tenant's running jobs, clamped to
    1..3600, else ``DEFAULT_RETRY_AFTER_S``."""
    eta = session.scalar(select(func.min(Job.progress_eta_s)).where(Job.tenant_id == tenant_id, Job.status == RUNNING))
    return DEFAULT_RETRY_AFTER_S if eta is None else int(min(3600, max(1, round(eta))))


def check_job_slot(session: Session, tenant: Tenant, settings: Settings) -> None:
    """Refuse a new job when the tenant already has its limit of live jobs. Call after ``lock_tenant``.

    Raises TooManyRequests (429 ``too_many_jobs``, with ``Retry-After``), after rolling back (releasing the lock)."""
    limit, live = job_limit(tenant, settings), live_jobs(session, tenant.id)
    if live >= limit:
        wait = retry_after_s(session, tenant.id)
        session.rollback()
        raise TooManyRequests(
            f"tenant {tenant.name!r} has {live} live jobs (queued, running or cancelling) and its limit is {limit} "
            f"(max_running_jobs); wait for one to end or cancel one, then retry", code="too_many_jobs",
            headers={"Retry-After": str(wait)})


def quota_error(tenant_name: str, limit: int, used: tuple[int, int], adding: int | None) -> PayloadTooLarge:
    """The 413 ``storage_quota_exceeded`` error, naming the quota, the bytes used by files and by job artifacts
    (``used``, as ``storage_by_kind`` gives them), what is left, and both ways to make room."""
    files, artifacts = used
    what = f"an upload of {adding} bytes" if adding is not None else "this upload"
    return PayloadTooLarge(
        f"{what} would take tenant {tenant_name!r} over its storage quota of {limit} bytes (max_storage_bytes): {files} bytes "
        f"are used by its files and {artifacts} by its jobs' artifacts, {max(0, limit - files - artifacts)} left; make room by "
        "deleting files (DELETE /v1/files/{id}) or finished jobs with their artifacts (DELETE /v1/jobs/{id}, "
        "`stillhouse delete JOB_ID`)", param="file", code="storage_quota_exceeded")


def remaining_storage(session: Session, tenant_id: str, settings: Settings) -> tuple[str, int, tuple[int, int]]:
    """(tenant name, quota in bytes, (bytes used by files, by artifacts)), read without locking to decide an upload's byte limit before its
    body arrives. Ends the read transaction, so none stays open while a long body streams in.
    Raises Unauthorized (401) if the tenant no longer exists."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        session.rollback()
        raise Unauthorized(f"tenant {tenant_id!r} does not exist", invalid_token=True)
    out = tenant.name, storage_limit(tenant, settings), storage_by_kind(session, tenant_id)
    session.rollback()
    return out


def check_storage(session: Session, tenant: Tenant, settings: Settings, adding: int) -> None:
    """Refuse to store ``adding`` more bytes when that passes the tenant's quota. Call after ``lock_tenant``.

    Raises PayloadTooLarge (413 ``storage_quota_exceeded``), after rolling back (releasing the lock)."""
    limit, used = storage_limit(tenant, settings), storage_by_kind(session, tenant.id)
    if sum(used) + adding > limit:
        session.rollback()
        raise quota_error(tenant.name, limit, used, adding)
