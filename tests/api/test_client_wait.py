"""``Stillhouse.wait`` follows the event stream and falls back to polling where the stream cannot be used (an older
server without the route, a proxy that breaks streaming); an unknown job is an error either way."""

from __future__ import annotations

import httpx
import pytest

from client import ApiError, Stillhouse

JOB = {"id": "job_1", "object": "job", "status": "queued", "progress": {}, "attempt": 0, "created_at": "2026-12-01T00:00:00Z",
       "spec": {}, "metadata": {}}


def _client(handler) -> Stillhouse:
    return Stillhouse("http://test", api_key="", transport=httpx.MockTransport(handler))


def test_falls_back_to_polling_when_the_stream_route_is_missing():
    polls = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/events/stream"):
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "Not Found", "param": None}})
        polls.append(1)
        return httpx.Response(200, json={**JOB, "status": "succeeded" if len(polls) >= 3 else "running"})

    seen = []
    job = _client(handler).wait("job_1", poll_s=0.01, on_update=lambda j: seen.append(j.status))
    assert job.status == "succeeded" and len(polls) == 3 and seen == ["running", "running", "succeeded"]


def test_follows_the_stream_and_reads_the_final_job():
    body = ("event: event\ndata: {\"id\": 1, \"created_at\": \"2026-12-01T00:00:00Z\", \"type\": \"status\", \"message\": \"m\"}\nid: 1\n\n"
            f"event: job\ndata: {httpx.Response(200, json={**JOB, 'status': 'running'}).text}\n\n"
            "event: end\ndata: {\"job_id\": \"job_1\", \"status\": \"failed\"}\n\n")
    paths = []

    def handler(req: httpx.Request) -> httpx.Response:
        paths.append(req.url.path)
        if req.url.path.endswith("/events/stream"):
            return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json={**JOB, "status": "failed", "error": {"code": "non_finite_loss", "message": "NaN"}})

    seen = []
    job = _client(handler).wait("job_1", on_update=lambda j: seen.append(j.status))
    assert job.status == "failed" and job.error.code == "non_finite_loss" and seen == ["running"]
    assert paths == ["/v1/jobs/job_1/events/stream", "/v1/jobs/job_1"]  # no polling loop


def test_a_dropped_stream_resumes_with_last_event_id():
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(req.headers.get("last-event-id"))
        if len(calls) == 1:
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  text="event: event\ndata: {\"id\": 5, \"created_at\": \"2026-12-01T00:00:00Z\", \"type\": \"x\", "
                                       "\"message\": \"a\"}\nid: 5\n\n")  # ends without 'end': the connection dropped
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              text="event: end\ndata: {\"job_id\": \"job_1\", \"status\": \"succeeded\"}\n\n")

    msgs = list(_client(handler).stream_events("job_1"))
    assert [m.kind for m in msgs] == ["event", "end"] and calls == [None, "5"]


def test_an_unknown_job_is_an_error_not_a_poll_loop():
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no job 'job_x'", "param": "job_id"}})

    with pytest.raises(ApiError) as e:
        _client(handler).wait("job_x", poll_s=0.01)
    assert e.value.status == 404 and e.value.param == "job_id"
