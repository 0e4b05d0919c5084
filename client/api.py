"""A typed Python client for the stillhouse API (httpx).

    from client import Stillhouse
    sh = Stillhouse("http://127.0.0.1:8000", api_key="sh_…")   # or STILLHOUSE_API_KEY; none needed on a loopback server
    teacher = sh.upload("teacher.safetensors", purpose="teacher")
    job = sh.create_job({...spec...})
    job = sh.wait(job.id)                                        # follows the live event stream (SSE)
    sh.download(job.id, "student.safetensors", "out/")

Every API error is raised as ``ApiError`` carrying the HTTP status, ``code``, ``message`` and ``param``.
"""

from __future__ import annotations

import hashlib
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
from httpx_sse import SSEError, connect_sse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distill.report import AnyReport, parse_report

FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class ApiError(Exception):
    """An error answer of the API (or no answer): ``status`` (HTTP, 0 if unreachable), ``code``, ``message``, ``param``."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (param: {param})" if param else ""))
        self.status, self.code, self.message, self.param = status, code, message, param


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class FileInfo(_Model):
    """An uploaded file: id, purpose, filename, bytes, sha256, detected format, parameters and shapes (models)."""

    id: str
    purpose: str
    filename: str
    bytes: int
    sha256: str
    format: str
    parameters: int | None = None
    input_shape: list[Any] | None = None
    output_shape: list[Any] | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime


class Progress(_Model):
    """Training progress: epoch/epochs, step/total_steps, fraction (0..1), eta_s (seconds)."""

    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    total_steps: int | None = None
    fraction: float | None = None
    eta_s: float | None = None


class JobError(_Model):
    """Why a job failed: ``code`` and ``message``."""

    code: str
    message: str


class Job(_Model):
    """A job: status, phase, progress, error, attempt (and how many were hand-backs), timestamps, timings and its spec."""

    id: str
    name: str | None = None
    status: str
    phase: str | None = None
    progress: Progress
    error: JobError | None = None
    attempt: int
    handbacks: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    timings: dict[str, float | None] = Field(default_factory=dict)
    queue: str | None = None
    waiting: dict[str, Any] | None = None
    registry: dict[str, Any] | None = None
    spec: dict[str, Any]
    metadata: dict[str, str] = Field(default_factory=dict)

    @property
    def done(self) -> bool:
        """True in a final status (succeeded, failed, cancelled)."""
        return self.status in FINAL_STATUSES


class Event(_Model):
    """A job event: id, created_at, type, message, data."""

    id: int
    created_at: datetime
    type: str
    message: str
    data: dict[str, Any] | None = None


class Metric(_Model):
    """A metric row: name, split, step, epoch, value."""

    id: int
    name: str
    split: str
    step: int
    epoch: int
    value: float


class Artifact(_Model):
    """A downloadable artifact: name, bytes, sha256, content_type, url."""

    name: str
    bytes: int
    sha256: str
    content_type: str
    url: str


def _typed_report(data: Any) -> AnyReport:
    """The API's report JSON as its ``distill.report`` variant. Raises ApiError ``unsupported_report`` when it fits
    none (e.g. a task family this client does not know yet: upgrade the client)."""
    try:
        return parse_report(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        job_id, task = (data.get("job_id"), data.get("task")) if isinstance(data, dict) else (None, None)
        raise ApiError(200, "unsupported_report", f"this client cannot read the report of job {job_id} (task {task!r}; "
                       f"{where}: {first['msg']}); a newer client may") from None


class StreamMessage(_Model):
    """One message of a job's event stream: ``kind`` 'event' (``event`` set), 'job' (``job`` set: the job changed)
    or 'end' (``status``: the job's final status, None when it was deleted)."""

    kind: str
    event: Event | None = None
    job: Job | None = None
    status: str | None = None


class Stillhouse:
    """Client of one stillhouse API at ``base_url`` (e.g. ``http://127.0.0.1:8000``). ``timeout`` in seconds.

    ``api_key`` (default: the ``STILLHOUSE_API_KEY`` environment variable; pass ``""`` for none) is sent as
    ``Authorization: Bearer <key>`` on every request; it selects the tenant whose files and jobs the client sees.
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None, headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        key = os.environ.get("STILLHOUSE_API_KEY") if api_key is None else api_key
        headers = dict(headers or {})
        if key:
            headers["Authorization"] = f"Bearer {key.strip()}"
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport, headers=headers)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> "Stillhouse":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------
    @staticmethod
    def _raise_for(resp: httpx.Response) -> None:
        if resp.is_success:
            return
        try:
            err = resp.json()["error"]
            raise ApiError(resp.status_code, err.get("code", "error"), err.get("message", resp.text), err.get("param"))
        except (ValueError, KeyError, TypeError):
            raise ApiError(resp.status_code, "http_error", resp.text[:500] or resp.reason_phrase) from None

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise ApiError(0, "unreachable", f"cannot reach {self.base_url}: {e}") from e
        self._raise_for(resp)
        return resp.json()

    def _pages(self, path: str, params: dict[str, Any], cursor: Callable[[dict[str, Any]], Any]) -> Iterator[dict[str, Any]]:
        params = {k: v for k, v in params.items() if v is not None}
        while True:
            page = self._request("GET", path, params=params)
            yield from page["data"]
            if not page["has_more"] or not page["data"]:
                return
            params["after"] = cursor(page["data"][-1])

    # -- health --------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """GET /healthz."""
        return self._request("GET", "/healthz")

    def ready(self) -> dict[str, Any]:
        """GET /readyz; raises ApiError(503) when the database or broker is down."""
        return self._request("GET", "/readyz")

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Poll /readyz until it answers 200; raises ApiError after ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.ready()
                return
            except ApiError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.25)

    # -- files ---------------------------------------------------------------------------------
    def upload(self, path: str | Path, purpose: str) -> FileInfo:
        """Upload a file (streamed from disk) with ``purpose`` teacher|dataset|student_init; returns its FileInfo."""
        path = Path(path)
        with path.open("rb") as fh:
            data = self._request("POST", "/v1/files", files={"file": (path.name, fh)}, data={"purpose": purpose})
        return FileInfo.model_validate(data)

    def find_file(self, sha256: str, purpose: str | None = None) -> FileInfo | None:
        """The tenant's file with this content (hex sha256) and, optionally, purpose, or None (GET /v1/files?sha256=)."""
        page = self._request("GET", "/v1/files", params={k: v for k, v in {"sha256": sha256, "purpose": purpose, "limit": 1}.items() if v})
        return FileInfo.model_validate(page["data"][0]) if page["data"] else None

    def get_file(self, file_id: str) -> FileInfo:
        """GET /v1/files/{id}."""
        return FileInfo.model_validate(self._request("GET", f"/v1/files/{file_id}"))

    def list_files(self, purpose: str | None = None) -> list[FileInfo]:
        """All files (newest first), optionally of one purpose."""
        return [FileInfo.model_validate(d) for d in self._pages("/v1/files", {"purpose": purpose, "limit": 100}, lambda d: d["id"])]

    def delete_file(self, file_id: str) -> None:
        """DELETE /v1/files/{id}; ApiError 409 while a live job uses it."""
        self._request("DELETE", f"/v1/files/{file_id}")

    # -- jobs ----------------------------------------------------------------------------------
    def create_job(self, spec: dict[str, Any], *, idempotency_key: str | None = None, metadata: dict[str, str] | None = None) -> Job:
        """POST /v1/jobs with a spec dict; ApiError 422 for an invalid spec, 429 ``too_many_jobs`` at the tenant's limit.

        With ``idempotency_key`` (≤ 255 characters) a retry of the same spec returns the same job instead of a second
        one; the same key with another spec raises ApiError 409 ``idempotency_key_reused``. ``metadata``: string labels
        kept with the job (16 keys at most, 64/512 characters), filterable with ``list_jobs(metadata=...)``."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        body = {**spec, "metadata": {**spec.get("metadata", {}), **metadata}} if metadata else spec
        return Job.model_validate(self._request("POST", "/v1/jobs", json=body, headers=headers))

    def get_job(self, job_id: str) -> Job:
        """GET /v1/jobs/{id}."""
        return Job.model_validate(self._request("GET", f"/v1/jobs/{job_id}"))

    def list_jobs(self, status: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None) -> list[Job]:
        """The newest ``limit`` jobs, optionally of one status and with these ``metadata`` values (all must match)."""
        params = {k: v for k, v in {"status": status, "limit": limit}.items() if v}
        params.update({f"metadata[{k}]": v for k, v in (metadata or {}).items()})
        page = self._request("GET", "/v1/jobs", params=params)
        return [Job.model_validate(d) for d in page["data"]]

    def delete_job(self, job_id: str) -> dict[str, Any]:
        """DELETE /v1/jobs/{id}: remove a finished job, its artifacts and report; returns ``{"id", "deleted", "freed_bytes"}``.
        ApiError 409 ``job_not_finished`` while it is queued or running."""
        return self._request("DELETE", f"/v1/jobs/{job_id}")

    def validate_job(self, spec: dict[str, Any], *, pending: list[str] | None = None) -> dict[str, Any]:
        """Dry run of POST /v1/jobs: the validated spec (a ``job.validation`` object) or ApiError 422, creating nothing.
        ``pending``: file roles whose files are not uploaded yet (their ``file_id`` may be a placeholder)."""
        params: dict[str, Any] = {"dry_run": "true"}
        if pending:
            params["pending"] = ",".join(pending)
        return self._request("POST", "/v1/jobs", json=spec, params=params)

    def cancel(self, job_id: str) -> Job:
        """POST /v1/jobs/{id}/cancel; ApiError 409 once the job has finished."""
        return Job.model_validate(self._request("POST", f"/v1/jobs/{job_id}/cancel"))

    def events(self, job_id: str, after: int | None = None) -> list[Event]:
        """All events of a job with id > ``after``, oldest first."""
        return [Event.model_validate(d) for d in self._pages(f"/v1/jobs/{job_id}/events", {"after": after, "limit": 1000}, lambda d: d["id"])]

    def metrics(self, job_id: str, name: str | None = None, split: str | None = None) -> list[Metric]:
        """All metric rows of a job, optionally one name/split."""
        params = {"name": name, "split": split, "limit": 10000}
        return [Metric.model_validate(d) for d in self._pages(f"/v1/jobs/{job_id}/metrics", params, lambda d: d["id"])]

    def report(self, job_id: str) -> AnyReport:
        """The compression report, typed (``distill.report``: ClassificationReport, SequenceClassificationReport or
        SentenceEmbeddingReport, by ``task``); ApiError 409 ``report_not_ready`` before the job succeeded."""
        return _typed_report(self._request("GET", f"/v1/jobs/{job_id}/report"))

    def _text(self, path: str, params: dict[str, Any]) -> str:
        try:
            resp = self._http.get(path, params=params)
        except httpx.TransportError as e:
            raise ApiError(0, "unreachable", f"cannot reach {self.base_url}: {e}") from e
        self._raise_for(resp)
        return resp.text

    def report_html(self, job_id: str) -> str:
        """The report as an HTML page with plots; ApiError 409 before the job succeeded."""
        return self._text(f"/v1/jobs/{job_id}/report", {"format": "html"})

    def compare_html(self, job_ids: list[str]) -> str:
        """Several succeeded jobs' reports side by side as one HTML page."""
        return self._text("/v1/reports", {"job_ids": ",".join(job_ids), "format": "html"})

    def compare(self, job_ids: list[str]) -> list[AnyReport]:
        """Several succeeded jobs' typed reports, in the given order (GET /v1/reports?job_ids=...)."""
        return [_typed_report(r) for r in self._request("GET", "/v1/reports", params={"job_ids": ",".join(job_ids)})["data"]]

    def artifacts(self, job_id: str) -> list[Artifact]:
        """The job's artifacts."""
        return [Artifact.model_validate(d) for d in self._request("GET", f"/v1/jobs/{job_id}/artifacts")["data"]]

    def download(self, job_id: str, name: str, dest: str | Path, chunk: int = 1024 * 1024) -> Path:
        """Stream artifact ``name`` into directory ``dest``; checks its sha256 against the ETag.

        Returns the file path. Raises ApiError (404 unknown, ``checksum_mismatch`` on a corrupt transfer)."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        out = dest / Path(name).name
        tmp = out.with_name(out.name + ".part")
        h = hashlib.sha256()
        try:
            with self._http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{name}") as resp:
                if not resp.is_success:
                    resp.read()
                    self._raise_for(resp)
                etag = resp.headers.get("etag", "").strip('"')
                with tmp.open("wb") as fh:
                    for block in resp.iter_bytes(chunk):
                        h.update(block)
                        fh.write(block)
        except httpx.TransportError as e:
            tmp.unlink(missing_ok=True)
            raise ApiError(0, "unreachable", f"download of {name} failed: {e}") from e
        if etag and h.hexdigest() != etag:
            tmp.unlink(missing_ok=True)
            raise ApiError(0, "checksum_mismatch", f"{name}: sha256 {h.hexdigest()} does not match the server's {etag}")
        tmp.replace(out)
        return out

    def stream_events(self, job_id: str, *, after: int | None = None, timeout_s: float | None = None,
                      reconnects: int = 5) -> Iterator[StreamMessage]:
        """The job's live event stream (``GET /v1/jobs/{id}/events/stream``, server-sent events read with httpx-sse)
        from event id ``after`` on, until the job ends (the last message has ``kind`` 'end').

        A dropped connection is reopened with ``Last-Event-ID`` (so no event is lost or repeated), up to
        ``reconnects`` times in a row. Raises ApiError (404 unknown job; 0 ``unreachable``), TimeoutError once
        ``timeout_s`` seconds have passed without the job ending."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        failures = 0
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"job {job_id} did not end within {timeout_s} s")
            read_s = 30.0 if left is None else max(0.2, min(30.0, left))  # the server pings an idle stream every 15 s
            headers = {"Last-Event-ID": str(after)} if after is not None else {}
            try:
                with connect_sse(self._http, "GET", f"/v1/jobs/{job_id}/events/stream", headers=headers,
                                 timeout=httpx.Timeout(10.0, read=read_s)) as source:
                    if not source.response.is_success:
                        source.response.read()
                        self._raise_for(source.response)
                    for sse in source.iter_sse():
                        failures = 0
                        if sse.event == "event":
                            ev = Event.model_validate_json(sse.data)
                            after = ev.id
                            yield StreamMessage(kind="event", event=ev)
                        elif sse.event == "job":
                            yield StreamMessage(kind="job", job=Job.model_validate_json(sse.data))
                        elif sse.event == "end":
                            yield StreamMessage(kind="end", status=sse.json().get("status"))
                            return
                        if deadline is not None and time.monotonic() > deadline:
                            raise TimeoutError(f"job {job_id} did not end within {timeout_s} s")
            except httpx.ReadTimeout:
                continue  # reopen with a fresh read timeout (and check the deadline)
            except (httpx.TransportError, SSEError) as e:
                failures += 1
                if failures > reconnects:
                    raise ApiError(0, "unreachable", f"event stream of {job_id} failed {failures} times: {e}") from e
                time.sleep(min(2.0, 0.2 * 2 ** failures))

    # -- webhooks ------------------------------------------------------------------------------
    def create_webhook(self, url: str, events: list[str] | None = None, description: str | None = None) -> dict[str, Any]:
        """POST /v1/webhooks; the answer holds the signing ``secret`` (``whsec_…``) this once. ApiError 422
        ``webhook_target_refused`` for a private or malformed URL."""
        body: dict[str, Any] = {"url": url}
        if events:
            body["events"] = events
        if description is not None:
            body["description"] = description
        return self._request("POST", "/v1/webhooks", json=body)

    def webhooks(self) -> list[dict[str, Any]]:
        """The tenant's webhook endpoints (without secrets)."""
        return list(self._pages("/v1/webhooks", {"limit": 100}, lambda d: d["id"]))

    def update_webhook(self, endpoint_id: str, **changes: Any) -> dict[str, Any]:
        """PATCH /v1/webhooks/{id} with ``url``, ``events``, ``description`` or ``enabled``."""
        return self._request("PATCH", f"/v1/webhooks/{endpoint_id}", json=changes)

    def delete_webhook(self, endpoint_id: str) -> None:
        """DELETE /v1/webhooks/{id}."""
        self._request("DELETE", f"/v1/webhooks/{endpoint_id}")

    def rotate_webhook_secret(self, endpoint_id: str, expire_previous_in_s: float | None = None) -> dict[str, Any]:
        """A new secret (in the answer, once); the old one also signs for ``expire_previous_in_s`` seconds (server default 24 h)."""
        body = {"expire_previous_in_s": expire_previous_in_s} if expire_previous_in_s is not None else {}
        return self._request("POST", f"/v1/webhooks/{endpoint_id}/rotate-secret", json=body)

    def test_webhook(self, endpoint_id: str) -> dict[str, Any]:
        """Queue a ``webhook.test`` event; returns the delivery."""
        return self._request("POST", f"/v1/webhooks/{endpoint_id}/test")

    def webhook_deliveries(self, endpoint_id: str, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The endpoint's newest ``limit`` deliveries with their attempts (the delivery log)."""
        params = {k: v for k, v in {"status": status, "limit": limit}.items() if v}
        return self._request("GET", f"/v1/webhooks/{endpoint_id}/deliveries", params=params)["data"]

    def create_sweep(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/sweeps: a base job spec, search_space, objectives, sampler, budget; returns the sweep object. ApiError
        422 naming the field (``base.…``, ``search_space.<path>``)."""
        return self._request("POST", "/v1/sweeps", json=body)

    def sweep(self, sweep_id: str) -> dict[str, Any]:
        """GET /v1/sweeps/{id}: status, progress (trials by status), best so far."""
        return self._request("GET", f"/v1/sweeps/{sweep_id}")

    def sweep_trials(self, sweep_id: str) -> list[dict[str, Any]]:
        """GET /v1/sweeps/{id}/trials: each trial's job, params, status and selection-split scores."""
        return self._request("GET", f"/v1/sweeps/{sweep_id}/trials")["data"]

    def sweep_front(self, sweep_id: str) -> dict[str, Any]:
        """GET /v1/sweeps/{id}/front: the non-dominated trials with their held-out validation top-1 and intervals."""
        return self._request("GET", f"/v1/sweeps/{sweep_id}/front")

    def cancel_sweep(self, sweep_id: str) -> dict[str, Any]:
        """POST /v1/sweeps/{id}/cancel."""
        return self._request("POST", f"/v1/sweeps/{sweep_id}/cancel")

    def wait_sweep(self, sweep_id: str, *, poll_s: float = 2.0, timeout_s: float | None = None,
                   on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll the sweep every ``poll_s`` seconds until it ends (succeeded, failed, cancelled) and return it;
        ``on_update`` sees each poll. Raises TimeoutError after ``timeout_s`` seconds, ApiError (404 unknown sweep)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            sw = self.sweep(sweep_id)
            if on_update:
                on_update(sw)
            if sw["status"] in ("succeeded", "failed", "cancelled"):
                return sw
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"sweep {sweep_id} still {sw['status']} after {timeout_s} s")
            time.sleep(poll_s)

    def wait(self, job_id: str, *, poll_s: float = 0.5, timeout_s: float | None = None,
             on_update: Callable[[Job], None] | None = None, stream: bool = True) -> Job:
        """Follow the job until it reaches a final status and return it; ``on_update`` sees each new state of the job.

        Uses the live event stream (``stream_events``) and falls back to polling ``GET /v1/jobs/{id}`` every ``poll_s``
        seconds when the stream cannot be used (an older server, a proxy that breaks streaming) or with
        ``stream=False``. Raises TimeoutError after ``timeout_s`` seconds, ApiError (404 unknown job)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if stream:
            try:
                for msg in self.stream_events(job_id, timeout_s=timeout_s):
                    if msg.kind == "job" and on_update:
                        on_update(msg.job)
                    if msg.kind == "end":
                        break
                job = self.get_job(job_id)
                if job.done:
                    return job
            except ApiError as e:
                if e.status == 404 and e.param == "job_id":
                    raise  # the job does not exist: polling would say the same
        while True:
            job = self.get_job(job_id)
            if on_update:
                on_update(job)
            if job.done:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout_s} s")
            time.sleep(poll_s)
