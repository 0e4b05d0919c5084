"""Secrets and signatures of the Standard Webhooks spec (https://www.standardwebhooks.com/, 2023), through the
``standardwebhooks`` package: ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and ``webhook-signature``
(``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` with the secret's key)."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime

from standardwebhooks.webhooks import Webhook

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
"""Key length of a new secret (256 bits; the spec asks for 24 to 64 bytes)."""


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 32 random bytes (``secrets``)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def signature_headers(msg_id: str, when: datetime, body: str, secrets_: list[str]) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt of message ``msg_id`` with JSON ``body`` at ``when``; one
    space-separated ``v1,`` signature per secret (two during a rotation's grace period, so a receiver holding either
    secret verifies it). Raises ValueError without a secret."""
    if not secrets_:
        raise ValueError("a webhook needs at least one secret to be signed")
    sigs = [Webhook(s).sign(msg_id, when, body) for s in secrets_]
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(when.timestamp())), "webhook-signature": " ".join(sigs)}
