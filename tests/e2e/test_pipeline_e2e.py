"""A pipeline's view, end to end with a real API and a real worker: a job followed on its event stream, its signed
webhook delivered by the worker and verified by a receiver, /metrics counting it (API and worker processes added up),
and the CLI a pipeline step calls: ``submit --wait`` exit codes, ``--json``, validation before any upload and uploads
deduplicated by sha256."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Iterator

import pytest
import yaml

from tests.api.test_metrics import samples
from tests.e2e.conftest import ROOT, Live, start, stop
from tests.e2e.test_jobs_e2e import spec
from tests.webhooks import WebhookReceiver

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pipeline(backend_session, tmp_path_factory) -> Iterator[Live]:
    """API + worker that may deliver webhooks to loopback (the test receiver), retrying after 0.5 s."""
    lv = start(backend_session, tmp_path_factory.mktemp("logs"),
               env={"STILLHOUSE_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true", "STILLHOUSE_WEBHOOK_RETRY_SCHEDULE_S": "[0.5, 0.5]",
                    "STILLHOUSE_WEBHOOK_POLL_INTERVAL_S": "0.2", "STILLHOUSE_EVENTS_POLL_INTERVAL_S": "0.1"})
    yield lv
    stop(lv)


def test_stream_webhook_and_metrics_of_a_real_job(pipeline, digits_teacher):
    c = pipeline.client
    with WebhookReceiver(statuses=[503]) as rx:  # the first attempt fails: the worker retries
        ep = c.create_webhook(rx.url, ["job.succeeded", "job.failed"])
        teacher = c.upload(digits_teacher, "teacher")
        job = c.create_job(spec(teacher.id), metadata={"dag": "e2e"})
        msgs = list(c.stream_events(job.id, timeout_s=300))
        assert msgs[-1].kind == "end" and msgs[-1].status == "succeeded", [m.kind for m in msgs]
        types = [m.event.type for m in msgs if m.kind == "event"]
        phases = [m.event.data["phase"] for m in msgs if m.kind == "event" and m.event.type == "phase"]
        assert types[0] == "status" and types[-1] == "status" and phases[0] == "loading_teacher" and "training" in phases
        steps = [m.job.progress.step for m in msgs if m.kind == "job" and m.job.progress.step]
        assert steps and steps == sorted(steps)  # live progress, in order
        reqs = rx.wait_for(2, timeout_s=60)
    assert [r.status for r in reqs] == [503, 200] and reqs[0].headers["webhook-id"] == reqs[1].headers["webhook-id"]
    payload = reqs[1].verify(ep["secret"])
    assert payload["type"] == "job.succeeded" and payload["data"] == {"object": "job", "id": job.id, "status": "succeeded"}
    log = c.webhook_deliveries(ep["id"])
    assert [(d["status"], d["attempts"]) for d in log] == [("succeeded", 2)]
    m = samples(c._http.get("/metrics").text)
    assert m[("stillhouse_jobs", (("status", "succeeded"),))] >= 1
    assert m[("stillhouse_jobs_finished_total", (("status", "succeeded"),))] >= 1  # counted by the worker's pool child
    assert m[("stillhouse_job_phase_duration_seconds_count", (("phase", "training"),))] >= 1
    assert m[("stillhouse_webhook_attempts_total", (("outcome", "http_error"),))] >= 1
    assert m[("stillhouse_http_requests_total", (("method", "GET"), ("route", "/v1/jobs/{job_id}/events/stream"), ("status", "200")))] >= 1
    assert [j.id for j in c.list_jobs(metadata={"dag": "e2e"})] == [job.id]


def _cli(pipeline: Live, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "client.cli", "--api", pipeline.url, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_cli_submit_wait_exit_codes_json_and_no_wasted_uploads(pipeline, digits_teacher, tmp_path, backend_session):
    if backend_session.name != "sqlite":
        pytest.skip("the CLI is exercised once, on the embedded default")
    c = pipeline.client
    files_before = len(c.list_files())
    bad = spec("file_x", **{"method.temperature": 0})
    bad["teacher"] = {"path": str(digits_teacher)}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    res = _cli(pipeline, "submit", str(tmp_path / "bad.yaml"))
    assert res.returncode == 2 and "method.temperature" in res.stderr
    assert len(c.list_files()) == files_before, "a spec the server refuses must upload nothing"

    good = spec("file_x", **{"training.epochs": 1})
    good["teacher"] = {"path": str(digits_teacher)}
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(good))
    res = _cli(pipeline, "submit", str(tmp_path / "good.yaml"), "--wait", "--json", "--metadata", "run=1")
    assert res.returncode == 0, res.stderr
    job = json.loads(res.stdout)
    assert job["status"] == "succeeded" and job["metadata"] == {"run": "1"} and job["id"].startswith("job_")
    n_files = len(c.list_files())
    res = _cli(pipeline, "submit", str(tmp_path / "good.yaml"), "--json")  # the teacher is already there: not uploaded again
    assert res.returncode == 0 and "already uploaded" in " ".join(res.stderr.split()), res.stderr  # rich wraps at the width
    second = json.loads(res.stdout)
    assert len(c.list_files()) == n_files and second["spec"]["teacher"]["file_id"] == job["spec"]["teacher"]["file_id"]
    assert _cli(pipeline, "wait", second["id"], "--json").returncode == 0

    failing = spec(job["spec"]["teacher"]["file_id"], **{"teacher.architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [7]}}})
    (tmp_path / "fail.json").write_text(json.dumps(failing))
    res = _cli(pipeline, "submit", str(tmp_path / "fail.json"), "--wait", "--json")
    assert res.returncode == 1 and json.loads(res.stdout)["status"] == "failed" and json.loads(res.stdout)["error"]["code"], res.stderr

    # long enough that it is still running when the cancel arrives (50 epochs of digits could end first on a quiet machine)
    slow = spec(job["spec"]["teacher"]["file_id"], **{"training.epochs": 5_000})
    (tmp_path / "slow.json").write_text(json.dumps(slow))
    res = _cli(pipeline, "submit", str(tmp_path / "slow.json"), "--wait", "--timeout", "1", "--json")
    assert res.returncode == 4 and "has not ended after 1 s" in res.stderr
    slow_id = json.loads(res.stdout)["id"]
    cancel = _cli(pipeline, "cancel", slow_id, "--json")
    assert cancel.returncode == 0 and cancel.stdout.strip(), (cancel.returncode, cancel.stdout, cancel.stderr)
    assert json.loads(cancel.stdout)["status"] in ("cancelling", "cancelled")
    assert _cli(pipeline, "wait", slow_id).returncode == 3

    listed = _cli(pipeline, "jobs", "--json")
    assert {j["id"] for j in json.loads(listed.stdout)} >= {job["id"], second["id"], slow_id}
    narrow = subprocess.run([sys.executable, "-m", "client.cli", "--api", pipeline.url, "jobs"], cwd=ROOT, capture_output=True,
                            text=True, env={**__import__("os").environ, "COLUMNS": "40"})
    assert all(j in narrow.stdout for j in (job["id"], second["id"], slow_id)), narrow.stdout  # ids never cut
    events = [json.loads(line) for line in _cli(pipeline, "events", job["id"], "--follow", "--json").stdout.splitlines()]
    assert events[0]["type"] == "status" and events[-1]["data"]["status"] == "succeeded"
    dl = json.loads(_cli(pipeline, "download", job["id"], "--dir", str(tmp_path / "dl"), "--json").stdout)
    assert {d["name"] for d in dl} >= {"student.safetensors"} and all(len(d["sha256"]) == 64 for d in dl)
    deleted = json.loads(_cli(pipeline, "delete", job["id"], "--json").stdout)
    assert deleted["deleted"] is True and deleted["freed_bytes"] > 0
    assert _cli(pipeline, "status", job["id"]).returncode == 2


def test_cli_webhooks(pipeline, backend_session):
    if backend_session.name != "sqlite":
        pytest.skip("the CLI is exercised once, on the embedded default")
    with WebhookReceiver() as rx:
        made = _cli(pipeline, "webhooks", "create", rx.url, "--event", "job.failed", "--json")
        assert made.returncode == 0, made.stderr
        ep = json.loads(made.stdout)
        assert ep["secret"].startswith("whsec_") and ep["events"] == ["job.failed"]
        plain = _cli(pipeline, "webhooks", "create", rx.url + "?b")
        assert plain.returncode == 0 and plain.stdout.strip().startswith("whsec_") and "shown once" in plain.stderr
        listed = json.loads(_cli(pipeline, "webhooks", "list", "--json").stdout)
        assert ep["id"] in {e["id"] for e in listed} and all(e["secret"] is None for e in listed)
        assert _cli(pipeline, "webhooks", "test", ep["id"]).returncode == 0
        (got,) = rx.wait_for(1, timeout_s=30)
        assert got.verify(ep["secret"])["type"] == "webhook.test"
        deadline = __import__("time").monotonic() + 30
        while True:  # the worker records the attempt just after the receiver answered
            log = json.loads(_cli(pipeline, "webhooks", "deliveries", ep["id"], "--json").stdout)
            if log[0]["status"] == "succeeded" or __import__("time").monotonic() > deadline:
                break
        assert log[0]["status"] == "succeeded" and log[0]["attempt_log"][0]["status_code"] == 200
        rotated = _cli(pipeline, "webhooks", "rotate-secret", ep["id"], "--expire-previous-in", "0")
        assert rotated.returncode == 0 and rotated.stdout.strip().startswith("whsec_") and rotated.stdout.strip() != ep["secret"]
        paused = json.loads(_cli(pipeline, "webhooks", "enable", ep["id"], "--off", "--json").stdout)
        assert paused["enabled"] is False
        assert _cli(pipeline, "webhooks", "test", ep["id"]).returncode == 2  # 422 webhook_disabled
        assert _cli(pipeline, "webhooks", "delete", ep["id"]).returncode == 0
        assert ep["id"] not in {e["id"] for e in json.loads(_cli(pipeline, "webhooks", "list", "--json").stdout)}
        refused = _cli(pipeline, "webhooks", "create", "ftp://93.184.216.34/x")
        assert refused.returncode == 2 and "webhook_target_refused" in refused.stderr
