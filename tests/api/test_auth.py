"""API keys: stored hashed, checked on every /v1 request (Bearer), revocable; the auth modes (auto / required / off)
and the start-up refusal; the admin command (``python -m app tenants|keys``) run as real subprocesses."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from tests import files as mk
from tests.api.test_files import assert_error, upload
from tests.tenancy import bearer, make_tenant

ROOT = Path(__file__).resolve().parents[2]


def require_keys(monkeypatch, mode: str = "required", host: str | None = None) -> None:
    from stillhouse.settings import get_settings

    monkeypatch.setenv("STILLHOUSE_AUTH", mode)
    if host is not None:
        monkeypatch.setenv("STILLHOUSE_HOST", host)
    get_settings.cache_clear()


def assert_401(resp, invalid_token: bool) -> dict:
    err = assert_error(resp, 401, "unauthorized")
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith("Bearer"), challenge
    assert ('error="invalid_token"' in challenge) is invalid_token, challenge
    return err


def test_keys_are_random_and_only_their_hash_is_stored(backend):
    from sqlalchemy import select

    from app.auth.service import KEY_RE
    from stillhouse.db import session_factory
    from stillhouse.models import ApiKey

    _, k1 = make_tenant("acme")
    _, k2 = make_tenant("globex")
    assert k1 != k2 and KEY_RE.match(k1) and KEY_RE.match(k2)
    with session_factory()() as s:
        rows = {r.prefix: r for r in s.scalars(select(ApiKey))}
    assert set(rows) == {k1[:11], k2[:11]}
    for key in (k1, k2):
        row = rows[key[:11]]
        assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
        stored = " ".join(str(v) for v in (row.id, row.name, row.prefix, row.key_hash, row.tenant_id))
        assert key[12:] not in stored  # the secret part is nowhere in the row


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/docs", "/openapi.json"])
async def test_health_and_docs_need_no_key(api, monkeypatch, path):
    require_keys(monkeypatch)
    resp = await api.get(path)
    assert resp.status_code == 200, resp.text


async def test_required_mode_refuses_requests_without_a_valid_key(api, monkeypatch, tmp_path):
    require_keys(monkeypatch)
    _, key = make_tenant("acme")
    for method, path in (("get", "/v1/files"), ("get", "/v1/jobs"), ("get", "/v1/jobs/job_x"), ("post", "/v1/jobs"),
                         ("get", "/v1/reports?job_ids=job_x")):
        err = assert_401(await api.request(method.upper(), path), invalid_token=False)
        assert "API key is required" in err["message"] and err["param"] == "Authorization"
    assert_401(await upload(api, mk.safetensors_file(tmp_path)), invalid_token=False)
    # wrong scheme, empty bearer, malformed, unknown (right shape, wrong secret)
    for header in ("Basic dXNlcjpwdw==", "Bearer", "Bearer not-a-key", f"Bearer {key[:-1]}{'A' if key[-1] != 'A' else 'B'}"):
        assert_401(await api.get("/v1/jobs", headers={"Authorization": header}), invalid_token=True)
    ok = await api.get("/v1/jobs", headers=bearer(key))
    assert ok.status_code == 200 and ok.json()["data"] == []


async def test_off_mode_still_checks_a_key_that_is_sent(api, tmp_path):
    """On loopback without a key a request acts as 'default'; with a key it acts as the key's tenant, and a bad key is 401."""
    _, key = make_tenant("acme")
    mine = (await api.post("/v1/files", files={"file": ("m.safetensors", mk.safetensors_file(tmp_path).read_bytes())},
                           data={"purpose": "teacher"}, headers=bearer(key))).json()["id"]
    theirs = (await upload(api, mk.safetensors_file(tmp_path))).json()["id"]
    assert [f["id"] for f in (await api.get("/v1/files", headers=bearer(key))).json()["data"]] == [mine]
    assert [f["id"] for f in (await api.get("/v1/files")).json()["data"]] == [theirs]
    assert_401(await api.get("/v1/files", headers=bearer("sh_00000000_" + "x" * 43)), invalid_token=True)
    assert_401(await api.get("/v1/files", headers={"Authorization": "Token abc"}), invalid_token=True)


async def test_keyless_request_from_a_non_loopback_client_is_refused_even_when_off(backend):
    """Defence in depth: a server bound elsewhere than STILLHOUSE_HOST says (uvicorn run by hand) serves no stranger keyless."""
    from app.main import create_app

    app = create_app(auto_migrate=False)
    _, key = make_tenant("acme")
    remote = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
    async with httpx.AsyncClient(transport=remote, base_url="http://test") as c:
        err = assert_401(await c.get("/v1/jobs"), invalid_token=False)
        assert "203.0.113.9" in err["message"]
        assert (await c.get("/v1/jobs", headers=bearer(key))).status_code == 200
        assert (await c.get("/healthz")).status_code == 200


async def test_auto_mode_requires_keys_on_a_non_loopback_host(api, monkeypatch):
    require_keys(monkeypatch, "auto", host="0.0.0.0")
    assert_401(await api.get("/v1/jobs"), invalid_token=False)
    require_keys(monkeypatch, "auto", host="::1")
    assert (await api.get("/v1/jobs")).status_code == 200
    # 'off' asked for on a public host fails safe (and start-up refuses it, below)
    require_keys(monkeypatch, "off", host="10.1.2.3")
    assert_401(await api.get("/v1/jobs"), invalid_token=False)


@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True), ("LocalHost", True),
    ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("192.168.1.2", False),
    ("example.com", False), ("localhost.evil.com", False), ("", False),
])
def test_is_loopback(host, loopback):
    from app.auth.mode import is_loopback

    assert is_loopback(host) is loopback


def test_start_up_announces_the_mode(capsys):
    from app.auth.mode import AuthConfigError, announce_auth_mode
    from stillhouse.settings import Settings

    assert announce_auth_mode(Settings(host="127.0.0.1", auth="auto")).required is False
    out = capsys.readouterr().err
    assert "authentication is OFF: bound to loopback 127.0.0.1, every request without a key acts as tenant 'default'" in out
    assert announce_auth_mode(Settings(host="0.0.0.0", auth="auto")).required is True
    assert "authentication is REQUIRED" in capsys.readouterr().err
    assert announce_auth_mode(Settings(host="127.0.0.1", auth="required")).required is True
    with pytest.raises(AuthConfigError, match="0.0.0.0"):
        announce_auth_mode(Settings(host="0.0.0.0", auth="off"))


def _run(args: list[str], backend, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, **backend.env(), **env}
    if backend.database_url is None:
        full.pop("STILLHOUSE_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, env=full, capture_output=True, text=True, timeout=120)


def test_serve_refuses_auth_off_on_a_public_host(backend):
    """A real `python -m app serve`: exits at once with status 2 and says why, never binding 0.0.0.0."""
    proc = _run(["serve"], backend, STILLHOUSE_AUTH="off", STILLHOUSE_HOST="0.0.0.0", STILLHOUSE_PORT="1")
    assert proc.returncode == 2, proc.stderr
    assert "STILLHOUSE_AUTH=off is refused" in proc.stderr and "0.0.0.0" in proc.stderr
    assert "Uvicorn running" not in proc.stderr


@pytest.mark.slow
@pytest.mark.backend_only("sqlite", reason="a dozen CLI subprocesses; on PostgreSQL the security e2e test runs the same commands")
async def test_admin_command_creates_lists_limits_and_revokes(api, backend):
    """``python -m app tenants …`` / ``keys …`` as real subprocesses on the test database; the printed key works."""
    created = _run(["tenants", "create", "acme", "--max-running-jobs", "3", "--max-storage-bytes", "2MiB"], backend)
    assert created.returncode == 0, created.stderr
    assert "created tenant 'acme'" in created.stderr
    dup = _run(["tenants", "create", "acme"], backend)
    assert dup.returncode == 1 and "exists" in dup.stderr
    assert _run(["keys", "create", "--tenant", "nobody"], backend).returncode == 1

    made = _run(["keys", "create", "--tenant", "acme", "--name", "ci"], backend)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("sh_") and "shown this once" in made.stderr and "Authorization: Bearer" in made.stderr
    assert (await api.get("/v1/jobs", headers=bearer(key))).status_code == 200

    listed = _run(["keys", "list", "--tenant", "acme", "--json"], backend)
    rows = json.loads(listed.stdout)
    assert [(r["prefix"], r["tenant"], r["name"], r["revoked"]) for r in rows] == [(key[:11], "acme", "ci", "-")]
    assert rows[0]["last_used"] != "-"  # the request above recorded its use
    assert key[12:] not in listed.stdout and key[12:] not in _run(["keys", "list"], backend).stdout

    tenants = {t["name"]: t for t in json.loads(_run(["tenants", "list", "--json"], backend).stdout)}
    assert tenants["acme"]["max_running_jobs"] == 3 and tenants["acme"]["max_storage_bytes"] == 2 * 1024**2
    assert tenants["default"]["max_running_jobs_is_default"] is True
    assert _run(["tenants", "set-limits", "acme", "--max-running-jobs", "default", "--max-storage-bytes", "5MB"], backend).returncode == 0
    tenants = {t["name"]: t for t in json.loads(_run(["tenants", "list", "--json"], backend).stdout)}
    assert tenants["acme"]["max_running_jobs_is_default"] is True and tenants["acme"]["max_storage_bytes"] == 5_000_000
    bad = _run(["tenants", "set-limits", "acme", "--max-running-jobs", "0"], backend)
    assert bad.returncode == 1 and "between 1 and" in bad.stderr
    for option, value in (("--max-running-jobs", "3000000000"), ("--max-storage-bytes", "99999999999999999999999")):
        huge = _run(["tenants", "set-limits", "acme", option, value], backend)  # beyond the column: a clear message, not SQL's
        assert huge.returncode == 1 and "between 1" in huge.stderr and "database" not in huge.stderr, huge.stderr

    revoked = _run(["keys", "revoke", rows[0]["id"]], backend)
    assert revoked.returncode == 0 and "revoked" in revoked.stderr, revoked.stderr
    err = assert_401(await api.get("/v1/jobs", headers=bearer(key)), invalid_token=True)
    assert "revoked" in err["message"]
    again = _run(["keys", "revoke", key[:11]], backend)
    assert again.returncode == 0 and "already revoked" in again.stderr
    assert json.loads(_run(["keys", "list", "--json"], backend).stdout)[0]["revoked"] != "-"


async def test_last_used_is_written_at_most_once_a_minute(api):
    from sqlalchemy import update

    from stillhouse.db import session_factory
    from stillhouse.models import ApiKey

    _, key = make_tenant("acme")

    def last_used():
        with session_factory()() as s:
            return s.query(ApiKey).one().last_used_at

    assert last_used() is None
    assert (await api.get("/v1/jobs", headers=bearer(key))).status_code == 200
    first = last_used()
    assert first is not None
    for _ in range(3):
        assert (await api.get("/v1/files", headers=bearer(key))).status_code == 200
    assert last_used() == first  # no write per request
    with session_factory()() as s:  # as if the last use were two minutes ago
        s.execute(update(ApiKey).values(last_used_at=first - timedelta(minutes=2)))
        s.commit()
    assert (await api.get("/v1/jobs", headers=bearer(key))).status_code == 200
    assert last_used() > first - timedelta(seconds=1)


async def test_a_revoked_key_is_refused_at_once(api):
    from app.auth import service
    from stillhouse.db import session_factory

    _, key = make_tenant("acme")
    assert (await api.get("/v1/jobs", headers=bearer(key))).status_code == 200
    with session_factory()() as s:
        service.revoke_key(s, key[:11])
    assert_401(await api.get("/v1/jobs", headers=bearer(key)), invalid_token=True)
