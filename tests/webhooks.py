"""A real webhook receiver for the tests: an HTTP server on 127.0.0.1 (a free port) that records every request and
verifies its Standard Webhooks signature with the ``standardwebhooks`` package, as a user's receiver would.

    with WebhookReceiver(statuses=[500, 200]) as rx:       # answers 500 to the first request, then 200
        ... register rx.url (STILLHOUSE_WEBHOOK_ALLOW_PRIVATE_TARGETS=true: it is on loopback) ...
        msgs = rx.wait_for(1, timeout_s=30)
        payload = rx.verified(secret)[0]                    # the parsed body of each request whose signature holds

Used by the webhook API tests and end-to-end tests; the final e2e of issue 14 uses it beside the other servers.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    """One request: its path, headers (lower-case names), raw body, the status answered and the arrival time
    (``time.time()``)."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float

    def verify(self, secret: str) -> Any:
        """The parsed body if the signature verifies with ``secret`` (standardwebhooks); raises WebhookVerificationError."""
        return Webhook(secret).verify(self.body, self.headers)

    def json(self) -> Any:
        """The body parsed, unverified."""
        return json.loads(self.body)


class WebhookReceiver:
    """A threaded HTTP server answering POSTs with ``statuses`` in turn (then ``default``); see the module doc."""

    def __init__(self, statuses: list[int] | None = None, default: int = 200) -> None:
        self.statuses = list(statuses or [])
        self.default = default
        self.requests: list[Received] = []
        self._lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver._lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else receiver.default
                    receiver.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, status, time.time()))
                    receiver._lock.notify_all()
                self.send_response(status)
                self.send_header("content-type", "text/plain")
                self.end_headers()
                self.wfile.write(f"answered {status}".encode())

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/stillhouse"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, n: int, timeout_s: float = 30.0) -> list[Received]:
        """The requests once at least ``n`` arrived; raises TimeoutError after ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.requests)} of {n} webhook requests arrived in {timeout_s} s")
                self._lock.wait(left)
            return list(self.requests)

    def verified(self, secret: str) -> list[Any]:
        """The parsed bodies of the requests whose signature verifies with ``secret``; raises WebhookVerificationError
        at the first that does not."""
        return [r.verify(secret) for r in list(self.requests)]


__all__ = ["Received", "WebhookReceiver", "WebhookVerificationError"]
