"""The status read clients poll (``GET /v1/jobs/{id}``) stays light: one SELECT that leaves out the report,
no transaction around it, and no per-request sessionmaker (bench/load_status.py measured each of these)."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from tests.api.test_jobs import spec_for, teacher_id  # noqa: F401 - fixture
from tests.fixtures import stored_reports


async def test_status_is_one_select_without_the_report(api, backend, teacher_id):  # noqa: F811
    from stillhouse.db import get_engine, session_scope
    from stillhouse.models import Job

    job = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()
    big = {**stored_reports()["classification_full"], "per_class": {str(i): list(range(50)) for i in range(200)}}
    with session_scope() as s:
        s.get(Job, job["id"]).report = big
    statements: list[str] = []
    levels: list[str | None] = []

    def on_execute(conn, cursor, statement, params, context, executemany):
        statements.append(statement)
        levels.append(conn.get_execution_options().get("isolation_level"))

    engine = get_engine()
    sa.event.listen(engine, "before_cursor_execute", on_execute)
    try:
        resp = await api.get(f"/v1/jobs/{job['id']}")
    finally:
        sa.event.remove(engine, "before_cursor_execute", on_execute)
    assert resp.status_code == 200 and resp.json()["id"] == job["id"] and "report" not in resp.json()
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1, statements
    assert "jobs.report" not in selects[0] and "jobs.spec" in selects[0], selects[0]
    assert levels == ["AUTOCOMMIT"], "the status read ran inside a transaction (BEGIN and ROLLBACK round trips)"
    # the report is still there for the endpoint that shows it
    report = await api.get(f"/v1/jobs/{job['id']}/report")
    assert report.status_code == 200 and report.json()["per_class"] == big["per_class"]


async def test_unknown_job_is_still_a_404_in_the_error_shape(api, backend):
    resp = await api.get("/v1/jobs/job_nope")
    assert resp.status_code == 404 and resp.json()["error"] == {"code": "not_found", "message": "no job 'job_nope'", "param": "job_id"}


def test_one_sessionmaker_per_engine(backend):
    from stillhouse.db import get_engine, session_factory

    assert session_factory() is session_factory()
    assert session_factory().kw["bind"] is get_engine()


async def test_the_polled_status_is_the_job_object_the_other_endpoints_show(api, backend, teacher_id):  # noqa: F811
    """The status read serialises the row itself (no model validation): its JSON must be exactly the validated
    ``JobObject`` of the list and cancel endpoints, for a queued job and for a running one with progress, error and metadata."""
    from stillhouse.db import session_scope
    from stillhouse.jobs import states

    job = (await api.post("/v1/jobs", json={**spec_for(teacher_id), "metadata": {"dag": "nightly"}})).json()
    fresh = await api.get(f"/v1/jobs/{job['id']}")
    assert fresh.headers["content-type"] == "application/json"
    listed = (await api.get("/v1/jobs")).json()["data"][0]
    for body in (fresh.json(), listed):
        body["timings"].pop("queued_s")  # grows with the clock
    assert fresh.json() | {"timings": {}} == listed | {"timings": {}} and fresh.json()["metadata"] == {"dag": "nightly"}
    assert {k for k in fresh.json()} == {k for k in listed}
    with session_scope() as s:
        assert states.transition(s, job["id"], states.RUNNING, attempt=1, phase="training", progress_epoch=2, progress_epochs=5,
                                 progress_step=7, progress_total_steps=20, progress_fraction=0.35, progress_eta_s=3.5)
        assert states.transition(s, job["id"], states.FAILED, error_code="non_finite_loss", error_message="loss became NaN")
    polled = (await api.get(f"/v1/jobs/{job['id']}")).json()
    listed = (await api.get("/v1/jobs")).json()["data"][0]
    assert polled == listed
    assert polled["progress"] == {"epoch": 2, "epochs": 5, "step": 7, "total_steps": 20, "fraction": 0.35, "eta_s": 3.5}
    assert polled["error"] == {"code": "non_finite_loss", "message": "loss became NaN"} and polled["status"] == "failed"
    assert polled["created_at"].endswith("Z") and polled["spec"] == job["spec"]


@pytest.mark.postgres
def test_an_idle_connection_is_pinged_and_replaced_a_busy_one_is_not(tmp_path):
    """pool_pre_ping sent SELECT 1 before every read; now only a connection idle for db_ping_idle_s is pinged, and one
    the database dropped meanwhile is replaced without a failed request (then read in autocommit, as the status read does)."""
    from tests.conftest import _create_pg_database, services_or_skip

    services_or_skip()
    url, drop = _create_pg_database()
    from stillhouse.db import make_engine

    try:
        engine = make_engine(url, pool_size=2, ping_idle_s=0.3)
        sent: list[str] = []
        sa.event.listen(engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
        with engine.connect() as c:
            pid = c.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        with engine.connect() as c:  # checked out again at once: not pinged
            assert c.execute(sa.text("SELECT pg_backend_pid()")).scalar() == pid
        time.sleep(0.5)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:  # idle: pinged (the ping is raw DBAPI)
            assert c.execute(sa.text("SELECT pg_backend_pid()")).scalar() == pid
        admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as a:
            a.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        admin.dispose()
        time.sleep(0.5)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:  # the dead one is replaced, no error
            assert c.execute(sa.text("SELECT pg_backend_pid()")).scalar() != pid
        assert sent.count("SELECT 1") == 0 and all("pg_backend_pid" in s for s in sent)  # no SQLAlchemy-level pings
        engine.dispose()
    finally:
        drop()
