"""Job leases: which process runs a job, for how long, and when another may take it over.

A worker process that runs a job holds its lease: ``jobs.lease_owner`` = ``"<hostname>:<pid>:<random hex>"`` and
``jobs.lease_expires_at``, renewed by a heartbeat every third of ``STILLHOUSE_LEASE_TTL_S``. A lease is *dead*
when it expired, or when its owner is a process of this host that no longer exists (a killed pool child: no need
to wait for the expiry). Every claim and every write of the holder is a compare-and-set on these columns, so a
redelivered message, a second sweeper or a process that lost its lease can never overwrite the holder's work.

Clocks: expiry times are written and compared with each process's own UTC clock, so the hosts' clocks must agree
to well within the TTL (NTP does).
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import datetime, timedelta

import psutil
from sqlalchemy import ColumnElement, or_

from stillhouse.models import Job

_OWNER: tuple[int, str] | None = None  # (pid, owner id) of this process


def owner_id() -> str:
    """This process's lease owner id, ``"<hostname>:<pid>:<8 hex>"`` (a new one after a fork)."""
    global _OWNER
    pid = os.getpid()
    if _OWNER is None or _OWNER[0] != pid:
        _OWNER = (pid, f"{socket.gethostname()}:{pid}:{secrets.token_hex(4)}")
    return _OWNER[1]


def parse_owner(owner: str) -> tuple[str, int] | None:
    """``(hostname, pid)`` of an owner id, None when it is not of the form ``host:pid:random``."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def process_alive(pid: int) -> bool:
    """True when process ``pid`` exists on this host and is not a zombie (a killed child not yet reaped)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # exists, belongs to someone else
        return True


def owner_dead_here(owner: str | None) -> bool:
    """True when ``owner`` is a process of *this* host that no longer exists. Owners on other hosts, and ids that
    do not parse, are never judged here (only their expiry counts). A reused pid reads as alive: the lease then
    simply runs until it expires."""
    if not owner:
        return False
    parsed = parse_owner(owner)
    if parsed is None or parsed[0] != socket.gethostname():
        return False
    return parsed[1] != os.getpid() and not process_alive(parsed[1])


def lease_dead(owner: str | None, expires_at: datetime | None, now: datetime) -> bool:
    """Whether a lease seen as (``owner``, ``expires_at``) may be taken over at ``now`` (UTC)."""
    return owner is None or expires_at is None or expires_at <= now or owner_dead_here(owner)


def dead_lease_clause(now: datetime, seen_owner: str | None = None) -> ColumnElement[bool]:
    """SQL condition "the job's lease is dead at ``now``": no owner, no or a past expiry, or still the owner
    ``seen_owner`` that ``owner_dead_here`` found dead (pass it only then)."""
    terms = [Job.lease_owner.is_(None), Job.lease_expires_at.is_(None), Job.lease_expires_at <= now]
    if seen_owner is not None:
        terms.append(Job.lease_owner == seen_owner)
    return or_(*terms)


def held_by(owner: str) -> ColumnElement[bool]:
    """SQL condition "the job's lease is held by ``owner``" (whatever its expiry: a holder that is late renewing
    still owns the job until someone else claims it)."""
    return Job.lease_owner == owner


def expiry(now: datetime, ttl_s: float) -> datetime:
    """The expiry of a lease taken or renewed at ``now`` for ``ttl_s`` seconds."""
    return now + timedelta(seconds=ttl_s)
