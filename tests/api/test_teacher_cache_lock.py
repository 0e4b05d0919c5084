"""The shared teacher cache's lock across machines: two workers that share the PostgreSQL database but not a
filesystem (two stores, so two ``flock`` folders) take turns on an entry, so only one computes it; a lock whose holder
dies is released with its database session; SQLite (one machine) keeps the ``flock`` alone."""

from __future__ import annotations

import threading
import time

import pytest


def _caches(tmp_path, **kw):
    from stillhouse.db import get_engine
    from stillhouse.settings import get_settings
    from stillhouse.storage import LocalStore
    from stillhouse.teacher_cache import StoreSharedCache

    base = get_settings()
    return [StoreSharedCache(LocalStore(base.model_copy(update={"data_dir": tmp_path / m})), get_engine(), **kw) for m in "ab"]


@pytest.mark.backend_only("postgres", reason="the cross-machine lock is PostgreSQL's")
def test_two_machines_take_turns_on_an_entry(backend, tmp_path):
    a, b = _caches(tmp_path)
    order: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with a.lock("teachers/t/outputs-x"):
            order.append("a in")
            inside.set()
            time.sleep(0.5)
            order.append("a out")

    t = threading.Thread(target=first)
    t.start()
    assert inside.wait(10)
    assert b.busy("teachers/t/outputs-x") and not b.busy("teachers/t/other")  # the other machine sees it held
    t0 = time.monotonic()
    with b.lock("teachers/t/outputs-x"):  # the other machine waits for the first one's block
        order.append("b in")
        waited = time.monotonic() - t0
    t.join()
    assert order == ["a in", "a out", "b in"] and waited >= 0.3 and not a.busy("teachers/t/outputs-x")
    with b.lock("teachers/t/other"), a.lock("teachers/t/outputs-x"):  # other names do not wait on each other
        pass


@pytest.mark.backend_only("postgres", reason="the cross-machine lock is PostgreSQL's")
def test_a_dead_holders_lock_is_released_and_a_long_one_is_waited_out(backend, tmp_path):
    import sqlalchemy as sa

    from stillhouse.settings import get_settings
    from stillhouse.teacher_cache import advisory_key

    a, b = _caches(tmp_path, wait_s=0.5)
    other = sa.create_engine(get_settings().resolved_database_url)  # another machine's worker
    conn = other.connect()
    assert conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": advisory_key("teachers/t/e")}).scalar()
    t0 = time.monotonic()
    with a.lock("teachers/t/e"):  # held all along: waited out (0.5 s here), then computed anyway
        assert time.monotonic() - t0 >= 0.4
    conn.invalidate()  # the holder dies: its session ends, PostgreSQL frees the lock
    conn.close()
    other.dispose()
    t0 = time.monotonic()
    with b.lock("teachers/t/e"):
        assert time.monotonic() - t0 < 0.4


@pytest.mark.backend_only("sqlite", reason="SQLite: one machine, the file lock alone")
def test_sqlite_keeps_the_machine_lock_alone(backend, tmp_path):
    a, _ = _caches(tmp_path)
    assert a._engine is None
    with a.lock("teachers/t/e"):
        pass
