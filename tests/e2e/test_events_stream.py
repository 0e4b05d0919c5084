"""``GET /v1/jobs/{id}/events/stream`` over real HTTP (uvicorn on loopback): the events a worker writes arrive as
server-sent events in order, with the job's changes, and the stream ends when the job ends; a reconnect with
``Last-Event-ID`` resumes without loss or repeats; another tenant's job is a 404 before any byte is streamed.

The worker is played by the test, writing through the same SQL reporter and state transitions a worker uses
(tests/e2e/test_pipeline_e2e.py runs a real worker)."""

from __future__ import annotations

import threading
import time
from typing import Iterator

import httpx
import pytest

from tests import files as mk
from tests.e2e.conftest import Live, start, stop
from tests.tenancy import make_tenant

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(backend_session, tmp_path_factory) -> Iterator[Live]:
    """The API alone (no worker): the test writes what a worker would."""
    lv = start(backend_session, tmp_path_factory.mktemp("logs"), worker=False)
    yield lv
    stop(lv)


def _job(server: Live, tmp_path) -> str:
    teacher = server.client.upload(mk.safetensors_file(tmp_path), "teacher").id
    return server.client.create_job({"teacher": {"file_id": teacher}, "student": {"architecture": {"name": "mlp"}},
                                     "data": {"train": {"builtin": "digits"}}, "training": {"epochs": 1}}).id


def _reporter(job_id: str):
    from stillhouse.db import session_factory
    from stillhouse.jobs.reporter import SqlReporter

    return SqlReporter(session_factory(), job_id, interval_s=0.0)


def _transition(job_id: str, to: str, **fields) -> None:
    """Move the job as a worker would; a running job gets a live lease (else the API's sweep would re-send it)."""
    from datetime import timedelta

    from stillhouse.db import session_scope
    from stillhouse.jobs import states
    from stillhouse.models import utcnow

    if to == "running":
        fields = {"lease_owner": "test-host:1:abc", "lease_expires_at": utcnow() + timedelta(hours=1), **fields}
    with session_scope() as s:
        assert states.transition(s, job_id, to, **fields)


def test_events_arrive_live_in_order_and_the_stream_ends_with_the_job(server, backend, tmp_path):
    job_id = _job(server, tmp_path)
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(server.client.stream_events(job_id, timeout_s=60)), daemon=True)
    reader.start()
    time.sleep(1.0)
    _transition(job_id, "running", attempt=1, event="started on test (attempt 1)")
    rep = _reporter(job_id)
    rep.phase("training")
    rep.progress(epoch=1, epochs=1, step=5, total_steps=10, fraction=0.5, eta_s=1.0)
    time.sleep(0.6)  # the stream sees this state before the next
    rep.event("checkpoint", "saved epoch 1", {"epoch": 1})
    _transition(job_id, "succeeded", report={"summary": "ok"}, event="succeeded in 1.0 s")
    reader.join(timeout=30)
    assert not reader.is_alive(), "the stream did not end with the job"
    events = [m.event for m in got if m.kind == "event"]
    assert [(e.type, e.message) for e in events] == [
        ("status", "job created and queued"), ("status", "started on test (attempt 1)"), ("phase", "phase -> training"),
        ("checkpoint", "saved epoch 1"), ("status", "succeeded in 1.0 s")]
    assert [e.id for e in events] == sorted(e.id for e in events)
    jobs = [m.job for m in got if m.kind == "job"]
    assert jobs[0].status == "queued" and jobs[-1].status == "succeeded"
    assert any(j.status == "running" and j.progress.step == 5 and j.phase == "training" for j in jobs), [(j.status, j.progress) for j in jobs]
    assert got[-1].kind == "end" and got[-1].status == "succeeded"
    # a finished job's stream replays its events and ends at once
    again = list(server.client.stream_events(job_id, timeout_s=10))
    assert [m.event.id for m in again if m.kind == "event"] == [e.id for e in events] and again[-1].kind == "end"


def test_last_event_id_resumes_without_loss_or_repeats(server, backend, tmp_path):
    job_id = _job(server, tmp_path)
    _transition(job_id, "running", attempt=1)
    rep = _reporter(job_id)
    for i in range(3):
        rep.event("checkpoint", f"c{i}")
    url = f"{server.url}/v1/jobs/{job_id}/events/stream"
    with httpx.stream("GET", url, timeout=10) as resp:  # read the first three events, then drop the connection
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        ids, lines = [], resp.iter_lines()
        for line in lines:
            if line.startswith("id: "):
                ids.append(int(line[4:]))
                if len(ids) == 3:  # created, running, c0
                    break
    rep.event("checkpoint", "after the drop")
    _transition(job_id, "failed", error_code="non_finite_loss", error_message="NaN")
    resumed = list(server.client.stream_events(job_id, after=ids[-1], timeout_s=30))
    msgs = [m.event.message for m in resumed if m.kind == "event"]
    assert msgs == ["c1", "c2", "after the drop", "status -> failed"]
    assert [m.event.id for m in resumed if m.kind == "event"][0] > ids[-1]
    assert resumed[-1].status == "failed"
    # the header a browser's EventSource sends on reconnect works the same, and a malformed one is a 422
    with httpx.stream("GET", url, headers={"Last-Event-ID": str(ids[-1])}, timeout=10) as resp:
        body = resp.read().decode()
    import json

    data = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    assert [d["message"] for d in data if d.get("object") == "event"] == msgs
    assert body.count("event: event") == 4 and body.rstrip().splitlines()[-2] == "event: end" and "retry: 2000" in body
    bad = httpx.get(url, headers={"Last-Event-ID": "abc"}, timeout=10)
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "Last-Event-ID"


def test_another_tenants_job_is_a_404_and_a_deleted_job_ends_the_stream(server, backend, tmp_path):
    job_id = _job(server, tmp_path)
    _, key = make_tenant("other")
    theirs = httpx.get(f"{server.url}/v1/jobs/{job_id}/events/stream", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "not_found"
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(server.client.stream_events(job_id, timeout_s=60)), daemon=True)
    reader.start()
    time.sleep(0.8)
    server.client.cancel(job_id)  # queued -> cancelled: the stream ends
    reader.join(timeout=30)
    assert got[-1].kind == "end" and got[-1].status == "cancelled"
    server.client.delete_job(job_id)
    with pytest.raises(Exception) as e:
        list(server.client.stream_events(job_id, timeout_s=5))
    assert getattr(e.value, "status", None) == 404
