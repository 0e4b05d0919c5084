"""``/v1/webhooks`` and their delivery: endpoints per tenant (secret shown once, rotation), SSRF guard, deliveries
written with a job's final status and sent signed (verified by a real receiver with ``standardwebhooks``), retries with
backoff, the delivery log, 410 disabling the endpoint. The dispatcher a worker runs is called here pass by pass."""

from __future__ import annotations

import time

import pytest

from tests.api.test_files import assert_error
from tests.api.test_jobs import spec_for, teacher_id  # noqa: F401 - fixture
from tests.tenancy import bearer, make_tenant
from tests.webhooks import WebhookReceiver, WebhookVerificationError


@pytest.fixture
def private_ok(monkeypatch):
    """Targets on loopback allowed (the receiver runs on 127.0.0.1) and a short retry schedule."""
    from stillhouse.settings import get_settings

    monkeypatch.setenv("STILLHOUSE_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
    monkeypatch.setenv("STILLHOUSE_WEBHOOK_RETRY_SCHEDULE_S", "[0.2, 0.2]")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def finish(job_id: str, status: str) -> None:
    """Move a queued job to ``status`` as a worker (or a cancel) would."""
    from stillhouse.db import session_scope
    from stillhouse.jobs import states

    with session_scope() as s:
        if status != "cancelled":
            assert states.transition(s, job_id, states.RUNNING, attempt=1)
        kw = {"error_code": "non_finite_loss", "error_message": "NaN"} if status == "failed" else {}
        assert states.transition(s, job_id, status, **kw)


def pass_until_idle(max_passes: int = 20, pause_s: float = 0.25) -> int:
    """Run dispatcher passes until nothing is due any more; returns the attempts made."""
    from stillhouse.webhooks.dispatch import deliver_due

    total = 0
    for _ in range(max_passes):
        n = deliver_due()
        total += n
        if not n and not _pending():
            return total
        time.sleep(pause_s)
    return total


def _pending() -> int:
    from stillhouse.db import session_scope
    from stillhouse.models import WebhookDelivery

    with session_scope() as s:
        return s.query(WebhookDelivery).filter(WebhookDelivery.status == "pending").count()


@pytest.mark.parametrize("url", ["http://127.0.0.1/hook", "http://localhost:8000/", "http://10.1.2.3/", "http://192.168.0.10/",
                                 "http://172.16.5.4/", "http://169.254.169.254/latest/meta-data/", "http://[::1]/",
                                 "http://[::ffff:127.0.0.1]/", "http://100.64.0.1/", "http://0.0.0.0/", "http://[fe80::1]/"])
async def test_private_targets_are_refused_by_default(api, url):
    err = assert_error(await api.post("/v1/webhooks", json={"url": url}), 422, "webhook_target_refused")
    assert "STILLHOUSE_WEBHOOK_ALLOW_PRIVATE_TARGETS" in err["message"] and err["param"] == "url"
    assert (await api.get("/v1/webhooks")).json()["data"] == []


@pytest.mark.parametrize("url,why", [("ftp://93.184.216.34/x", "https://"), ("http://user:pw@93.184.216.34/", "credentials"),
                                     ("https:///nohost", "no host"), ("not a url", "https://"),
                                     ("https://no-such-host.invalid/x", "does not resolve")])
async def test_bad_urls_are_refused(api, url, why):
    err = assert_error(await api.post("/v1/webhooks", json={"url": url}), 422, "webhook_target_refused")
    assert why in err["message"], err


async def test_create_shows_the_secret_once_and_events_are_checked(api):
    resp = await api.post("/v1/webhooks", json={"url": "https://93.184.216.34/hooks", "description": "ci"})
    assert resp.status_code == 201, resp.text
    ep = resp.json()
    assert ep["id"].startswith("whep_") and ep["secret"].startswith("whsec_") and len(ep["secret"]) > 40
    assert ep["events"] == ["job.succeeded", "job.failed", "job.cancelled", "sweep.succeeded", "sweep.failed", "sweep.cancelled"]
    assert ep["enabled"] is True
    assert (await api.get(f"/v1/webhooks/{ep['id']}")).json()["secret"] is None
    assert [e["secret"] for e in (await api.get("/v1/webhooks")).json()["data"]] == [None]
    assert_error(await api.post("/v1/webhooks", json={"url": "https://93.184.216.34/", "events": ["job.exploded"]}), 422)
    assert_error(await api.post("/v1/webhooks", json={"url": "https://93.184.216.34/", "events": []}), 422)
    patched = (await api.patch(f"/v1/webhooks/{ep['id']}", json={"events": ["job.failed"], "enabled": False})).json()
    assert patched["events"] == ["job.failed"] and patched["enabled"] is False and patched["secret"] is None
    assert_error(await api.patch(f"/v1/webhooks/{ep['id']}", json={"url": "http://127.0.0.1/"}), 422, "webhook_target_refused")
    # another tenant sees none of it
    _, key = make_tenant("other")
    assert_error(await api.get(f"/v1/webhooks/{ep['id']}", headers=bearer(key)), 404, "not_found")
    assert (await api.get("/v1/webhooks", headers=bearer(key))).json()["data"] == []
    assert (await api.delete(f"/v1/webhooks/{ep['id']}")).json()["deleted"] is True
    assert_error(await api.get(f"/v1/webhooks/{ep['id']}"), 404, "not_found")


async def test_a_finished_job_is_delivered_signed_and_logged(api, backend, teacher_id, private_ok):  # noqa: F811
    with WebhookReceiver() as rx:
        ep = (await api.post("/v1/webhooks", json={"url": rx.url})).json()
        only_failed = (await api.post("/v1/webhooks", json={"url": rx.url + "?f", "events": ["job.failed"]})).json()
        job = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()["id"]
        finish(job, "succeeded")
        assert pass_until_idle() == 1  # only the endpoint subscribed to job.succeeded
        (got,) = rx.wait_for(1)
        payload = got.verify(ep["secret"])
        assert payload["type"] == "job.succeeded" and payload["data"] == {"object": "job", "id": job, "status": "succeeded"}
        assert payload["timestamp"].endswith("Z") and got.path == "/hooks/stillhouse"
        assert got.headers["webhook-id"].startswith("msg_") and got.headers["content-type"] == "application/json"
        assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
        with pytest.raises(WebhookVerificationError):
            got.verify(only_failed["secret"])  # another endpoint's secret does not verify it
        log = (await api.get(f"/v1/webhooks/{ep['id']}/deliveries")).json()["data"]
        assert [(d["status"], d["event_type"], d["job_id"], d["attempts"]) for d in log] == [("succeeded", "job.succeeded", job, 1)]
        assert log[0]["id"] == got.headers["webhook-id"] and log[0]["attempt_log"][0]["status_code"] == 200
        assert log[0]["attempt_log"][0]["response_excerpt"] == "answered 200" and log[0]["payload"] == payload
        assert (await api.get(f"/v1/webhooks/{only_failed['id']}/deliveries")).json()["data"] == []


async def test_failures_are_retried_with_backoff_then_given_up(api, backend, teacher_id, private_ok):  # noqa: F811
    with WebhookReceiver(statuses=[500, 503]) as rx:  # fails twice, then answers 200
        ep = (await api.post("/v1/webhooks", json={"url": rx.url})).json()
        job = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()["id"]
        finish(job, "failed")
        assert pass_until_idle() == 3
        reqs = rx.wait_for(3)
        assert [r.status for r in reqs] == [500, 503, 200]
        assert len({r.headers["webhook-id"] for r in reqs}) == 1 and len({r.body for r in reqs}) == 1  # the same message
        assert all(r.verify(ep["secret"])["type"] == "job.failed" for r in reqs)
        assert reqs[1].at - reqs[0].at >= 0.15  # waited the schedule's first delay (0.2 s, ±10%)
        (d,) = (await api.get(f"/v1/webhooks/{ep['id']}/deliveries")).json()["data"]
        assert d["status"] == "succeeded" and d["attempts"] == 3
        assert [a["status_code"] for a in d["attempt_log"]] == [500, 503, 200]
    with WebhookReceiver(default=500) as rx:  # never succeeds: 1 + 2 retries, then failed
        await api.patch(f"/v1/webhooks/{ep['id']}", json={"url": rx.url})
        job2 = (await api.post("/v1/jobs", json=spec_for(teacher_id))).json()["id"]
        finish(job2, "cancelled")
        pass_until_idle()
        assert len(rx.requests) == 3
        d = (await api.get(f"/v1/webhooks/{ep['id']}/deliveries", params={"status": "failed"})).json()["data"]
        assert [(x["job_id"], x["attempts"], x["last_status_code"]) for x in d] == [(job2, 3, 500)]


async def test_410_disables_the_endpoint_until_it_is_enabled_again(api, backend, teacher_id, private_ok):  # noqa: F811
    with WebhookReceiver(statuses=[410]) as rx:
        ep = (await api.post("/v1/webhooks", json={"url": rx.url})).json()
        jobs = [(await api.post("/v1/jobs", json=spec_for(teacher_id))).json()["id"] for _ in range(2)]
        finish(jobs[0], "succeeded")
        pass_until_idle()
        finish(jobs[1], "succeeded")  # while disabled: no delivery is even written
        pass_until_idle()
        assert len(rx.requests) == 1
        now = (await api.get(f"/v1/webhooks/{ep['id']}")).json()
        assert now["enabled"] is False and "410" in now["disabled_reason"]
        log = (await api.get(f"/v1/webhooks/{ep['id']}/deliveries")).json()["data"]
        assert [(d["status"], d["attempts"]) for d in log] == [("failed", 1)]
        assert_error(await api.post(f"/v1/webhooks/{ep['id']}/test"), 422, "webhook_disabled")
        enabled = (await api.patch(f"/v1/webhooks/{ep['id']}", json={"enabled": True})).json()
        assert enabled["enabled"] is True and enabled["disabled_reason"] is None
        assert (await api.post(f"/v1/webhooks/{ep['id']}/test")).status_code == 202
        pass_until_idle()
        assert rx.wait_for(2)[-1].verify(ep["secret"])["type"] == "webhook.test"


async def test_rotation_signs_with_both_secrets_during_the_grace_period(api, backend, private_ok):
    with WebhookReceiver() as rx:
        ep = (await api.post("/v1/webhooks", json={"url": rx.url})).json()
        rotated = (await api.post(f"/v1/webhooks/{ep['id']}/rotate-secret", json={"expire_previous_in_s": 3600})).json()
        assert rotated["secret"].startswith("whsec_") and rotated["secret"] != ep["secret"]
        assert rotated["previous_secret_expires_at"] is not None
        await api.post(f"/v1/webhooks/{ep['id']}/test")
        pass_until_idle()
        (got,) = rx.wait_for(1)
        assert len(got.headers["webhook-signature"].split(" ")) == 2
        assert got.verify(ep["secret"]) == got.verify(rotated["secret"])  # either secret verifies it
        final = (await api.post(f"/v1/webhooks/{ep['id']}/rotate-secret", json={"expire_previous_in_s": 0})).json()
        await api.post(f"/v1/webhooks/{ep['id']}/test")
        pass_until_idle()
        last = rx.wait_for(2)[-1]
        assert last.verify(final["secret"])["type"] == "webhook.test"
        for old in (ep["secret"], rotated["secret"]):
            with pytest.raises(WebhookVerificationError):
                last.verify(old)


async def test_a_target_refused_at_delivery_is_never_called(api, backend, private_ok, monkeypatch):
    """Registered while the operator allowed private targets, then disallowed: the dispatcher re-checks before each
    attempt (the address it connects to is the one it checked) and logs the refusal instead of calling it."""
    from stillhouse.settings import get_settings

    with WebhookReceiver() as rx:
        ep = (await api.post("/v1/webhooks", json={"url": rx.url})).json()
        await api.post(f"/v1/webhooks/{ep['id']}/test")
        monkeypatch.setenv("STILLHOUSE_WEBHOOK_ALLOW_PRIVATE_TARGETS", "false")
        get_settings.cache_clear()
        pass_until_idle()
        assert rx.requests == []
        (d,) = (await api.get(f"/v1/webhooks/{ep['id']}/deliveries")).json()["data"]
        assert d["status"] == "failed" and d["attempts"] == 3 and "target refused" in d["attempt_log"][0]["error"]


def test_a_claimed_delivery_is_attempted_once(backend, private_ok):
    """Two dispatchers racing for the same due delivery: the compare-and-set claim gives it to one."""
    from stillhouse.db import session_factory, session_scope
    from stillhouse.models import DEFAULT_TENANT, WebhookEndpoint
    from stillhouse.webhooks import outbox
    from stillhouse.webhooks.dispatch import _claim

    with session_scope() as s:
        s.add(WebhookEndpoint(id="whep_x", tenant_id=DEFAULT_TENANT, url="http://127.0.0.1:9/", events=["job.failed"], secret="whsec_"
                              + "A" * 43 + "=", enabled=True))
        s.flush()
        outbox.add_delivery(s, "whep_x", "job.failed", outbox.body("job.failed", {"id": "job_1"}))
    sessions = session_factory()
    assert len(_claim(sessions, 10)) == 1 and _claim(sessions, 10) == []
