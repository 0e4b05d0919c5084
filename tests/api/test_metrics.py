"""``GET /metrics``: Prometheus text from every process of the machine (multiprocess mode) plus job gauges from the
database; requests counted by route template (never an id), base units, the stillhouse_ prefix."""

from __future__ import annotations

import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

from tests.api.test_jobs import spec_for, teacher_id  # noqa: F401 - fixture
from tests.e2e.conftest import ROOT


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of an exposition."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_count_requests_by_route_and_jobs_by_status(api, backend, teacher_id):  # noqa: F811
    from stillhouse.db import session_scope
    from stillhouse.jobs import states

    before = samples((await api.get("/metrics")).text)
    jobs = [(await api.post("/v1/jobs", json=spec_for(teacher_id))).json()["id"] for _ in range(3)]
    for j in jobs:
        await api.get(f"/v1/jobs/{j}")
    await api.get("/v1/jobs/job_nope")
    await api.get("/no/such/path/abc123")
    with session_scope() as s:
        assert states.transition(s, jobs[0], states.RUNNING, attempt=1)
        assert states.transition(s, jobs[0], states.SUCCEEDED)
    resp = await api.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    now = samples(text)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return now.get(key, 0) - before.get(key, 0)

    assert delta("stillhouse_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status="200") == 3
    assert delta("stillhouse_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status="404") == 1
    assert delta("stillhouse_http_requests_total", method="POST", route="/v1/jobs", status="201") == 3
    assert delta("stillhouse_http_requests_total", method="GET", route="(unmatched)", status="404") == 1
    assert delta("stillhouse_http_request_duration_seconds_count", method="GET", route="/v1/jobs/{job_id}") == 4
    assert now[("stillhouse_jobs", (("status", "queued"),))] == 2 and now[("stillhouse_jobs", (("status", "succeeded"),))] == 1
    assert now[("stillhouse_jobs", (("status", "failed"),))] == 0
    assert now[("stillhouse_queue_depth", ())] == 2 and now[("stillhouse_queue_oldest_age_seconds", ())] >= 0
    assert not [j for j in jobs if j in text] and "abc123" not in text  # no ids as labels
    names = {fam.name for fam in text_string_to_metric_families(text)}
    assert all(n.startswith("stillhouse_") for n in names), names
    assert {"stillhouse_http_request_duration_seconds", "stillhouse_teacher_cache_hits", "stillhouse_event_streams"} <= names


def test_other_processes_add_up(backend, tmp_path):
    """Counters written by another process (a worker on the same machine) appear in this process's exposition."""
    from stillhouse import metrics

    before = samples(metrics.exposition(lambda: ({}, None)).decode())
    code = ("from stillhouse import metrics\n"
            "metrics.observe_job('succeeded', 12.0, {'cache': {'teacher_outputs': True, 'teacher_passes_saved': 700}})\n"
            "clock = metrics.PhaseClock(); clock.switch('training'); clock.close()\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                   env={**__import__("os").environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics.METRICS_DIR)})
    now = samples(metrics.exposition(lambda: ({}, None)).decode())
    assert now[("stillhouse_jobs_finished_total", (("status", "succeeded"),))] - before.get(
        ("stillhouse_jobs_finished_total", (("status", "succeeded"),)), 0) == 1
    assert now[("stillhouse_teacher_cache_hits_total", ())] - before.get(("stillhouse_teacher_cache_hits_total", ()), 0) == 700
    assert now[("stillhouse_job_run_duration_seconds_sum", (("status", "succeeded"),))] - before.get(
        ("stillhouse_job_run_duration_seconds_sum", (("status", "succeeded"),)), 0) == 12.0
    assert now[("stillhouse_job_phase_duration_seconds_count", (("phase", "training"),))] - before.get(
        ("stillhouse_job_phase_duration_seconds_count", (("phase", "training"),)), 0) == 1
