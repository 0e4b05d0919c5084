"""The status read clients poll (``GET /v1/jobs/{id}``) stays light: one SELECT that leaves out the report,
no transaction around it, and no per-request sessionmaker (bench/load_status.py measured each of these)."""

from __future__ import annotations

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
