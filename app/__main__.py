"""``python -m app``: run the API (``serve``, the default), the API and one worker together (``up``), the sweep
alone (``sweep``), and administer tenants and API keys (``tenants …``, ``keys …``).

``up`` is what ``make up`` runs: both processes in the foreground on the configured settings
(the embedded default needs no server); Ctrl-C (SIGINT) or SIGTERM stops both.

The admin commands work directly on the configured database (``STILLHOUSE_DATABASE_URL``, else the embedded
SQLite file, which they migrate first as the API does):

\b
    python -m app tenants create acme --max-running-jobs 4 --max-storage-bytes 50GiB
    python -m app keys create --tenant acme --name ci     # prints the key once
    python -m app keys list --tenant acme
    python -m app keys revoke sh_3f9c1a2b
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator, Optional

import typer
import uvicorn

from app.auth import limits, service
from app.auth.mode import AuthConfigError, check_auth_config
from app.auth.service import KEEP
from app.errors import ApiError
from stillhouse.db import migrate, session_factory
from stillhouse.jobs.sweep import main as sweep_main
from stillhouse.settings import get_settings, settings_or_exit

cli = typer.Typer(help=__doc__, add_completion=False, invoke_without_command=True, rich_markup_mode=None)
tenants_cli = typer.Typer(help="Create, list and limit tenants (the unit of isolation: a tenant sees only its own files and jobs).",
                          no_args_is_help=True)
keys_cli = typer.Typer(help="Create, list and revoke API keys (each belongs to one tenant).", no_args_is_help=True)
cli.add_typer(tenants_cli, name="tenants")
cli.add_typer(keys_cli, name="keys")


def serve() -> None:
    """Run the API with uvicorn on ``STILLHOUSE_HOST``:``STILLHOUSE_PORT``. Exits with status 2 and a message when
    ``STILLHOUSE_AUTH=off`` is set on a non-loopback host."""

    s = get_settings()
    try:
        check_auth_config(s)  # before binding anything; the app's start-up announces the mode
    except AuthConfigError as e:
        print(f"stillhouse: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    uvicorn.run("app.main:app", host=s.host, port=s.port, log_level="info", access_log=False)


def up() -> int:
    """Run API + worker as child processes until Ctrl-C or one of them exits; returns an exit code."""
    s = get_settings()
    env = dict(os.environ)
    if not s.torch_threads:
        # The API shares this machine with the worker: keep one core for it. Measured on 2 cores during
        # `make demo`: 2 intra-op threads made the worker's training phase 2.2x slower than 1 (18.5 s vs 8.5 s).
        cores = s.resolved_torch_threads() * s.worker_concurrency
        env["STILLHOUSE_TORCH_THREADS"] = str(max(1, (cores - 1) // s.worker_concurrency))
    # the one worker takes every job: a CUDA job on a machine without CUDA fails at once saying so, instead of waiting
    env.setdefault("STILLHOUSE_WORKER_QUEUES", f"{s.queue},{s.gpu_queue}")
    procs = [
        subprocess.Popen([sys.executable, "-m", "app", "serve"], env=env),
        subprocess.Popen([sys.executable, "-m", "worker"], env=env),
    ]
    print(f"stillhouse: API on http://{s.host}:{s.port} + 1 worker with {env.get('STILLHOUSE_TORCH_THREADS')} torch thread(s) per job "
          f"(database {s.resolved_database_url.split('@')[-1]}, broker {s.broker_url.split('@')[-1]}); Ctrl-C stops both",
          flush=True)
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    code = 0
    while not stopping:
        for p in procs:
            if p.poll() is not None:
                code = p.returncode or 1
                stopping = True
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
    return code


@cli.callback()
def _root(ctx: typer.Context) -> None:
    """Without a command: ``serve``."""
    if ctx.invoked_subcommand is None:
        serve()


@cli.command(name="serve")
def serve_cmd() -> None:
    """Run the API (uvicorn) on STILLHOUSE_HOST:STILLHOUSE_PORT."""
    serve()


@cli.command(name="up")
def up_cmd() -> None:
    """Run the API and one worker in the foreground; Ctrl-C stops both."""
    raise typer.Exit(up())


@cli.command(name="sweep")
def sweep_cmd(once: bool = typer.Option(False, "--once", help="One pass, print what it did as JSON, exit.")) -> None:
    """Run the sweep (stillhouse/jobs/sweep.py) alone: re-send unsent jobs and jobs whose worker died, fail lost ones. The API and
    every worker already run it; this is for cron or a separate process."""

    raise typer.Exit(sweep_main(["--once"] if once else []))


# -- admin -----------------------------------------------------------------------------------------------------------
def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextmanager
def _admin_session() -> Iterator:
    """A session on the configured database (the embedded one migrated first). Domain and database errors become a
    one-line message on stderr and exit status 1."""
    from sqlalchemy.exc import SQLAlchemyError


    settings = get_settings()
    try:
        if settings.database_url is None:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            migrate(settings)
        session = session_factory(settings)()
    except SQLAlchemyError as e:
        _say(f"error: cannot open the database {settings.resolved_database_url.split('@')[-1]}: {str(e).splitlines()[0]}")
        raise typer.Exit(1) from None
    try:
        yield session
    except ApiError as e:
        session.rollback()
        _say(f"error: {e.message}")
        raise typer.Exit(1) from None
    except SQLAlchemyError as e:
        session.rollback()
        _say(f"error: database: {str(e).splitlines()[0]} (is the schema migrated? `alembic upgrade head`)")
        raise typer.Exit(1) from None
    finally:
        session.close()


def _bytes(text: Optional[str], option: str) -> Optional[int]:
    """``'50GiB'``, ``'1.5 GB'``, ``'1000'`` → bytes (pydantic's ByteSize); None stays None."""
    if text is None:
        return None
    from pydantic import ByteSize, TypeAdapter, ValidationError

    try:
        return int(TypeAdapter(ByteSize).validate_python(text))
    except ValidationError:
        raise typer.BadParameter(f"{text!r} is not a size (e.g. 1000, 500MiB, 50GiB, 1.5GB)", param_hint=option) from None


def _limit_arg(text: Optional[str], option: str, *, size: bool) -> object:
    """For set-limits: None (option absent) -> keep; 'default' -> None (service default); else the number."""

    if text is None:
        return KEEP
    if text.strip().lower() == "default":
        return None
    if size:
        return _bytes(text, option)
    try:
        return int(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a whole number or 'default'", param_hint=option) from None


def _human(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,} B"


def _when(t) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S") if t is not None else "-"


def _table(rows: list[dict], columns: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(*columns)
    for r in rows:
        t.add_row(*[str(r[c]) for c in columns])
    Console(width=None if sys.stdout.isatty() else 200).print(t)  # piped: wide enough that ids are never cut


@tenants_cli.command("create")
def tenants_create(name: str = typer.Argument(..., help="Tenant name: letters, digits, '.', '_', '-' (at most 100)."),
                   max_running_jobs: Optional[int] = typer.Option(None, "--max-running-jobs", min=1,
                                                                  help="Live jobs (queued, running, cancelling) it may have; "
                                                                       "default: STILLHOUSE_MAX_RUNNING_JOBS_PER_TENANT."),
                   max_storage_bytes: Optional[str] = typer.Option(None, "--max-storage-bytes",
                                                                   help="Bytes of uploads + artifacts it may store, e.g. 50GiB; "
                                                                        "default: STILLHOUSE_MAX_STORAGE_BYTES_PER_TENANT.")) -> None:
    """Create a tenant."""

    storage = _bytes(max_storage_bytes, "--max-storage-bytes")
    with _admin_session() as s:
        t = service.create_tenant(s, name, max_running_jobs=max_running_jobs, max_storage_bytes=storage)
    _say(f"created tenant {t.name!r} (id {t.id}); give it a key with: python -m app keys create --tenant {t.name}")
    print(t.id)


@tenants_cli.command("list")
def tenants_list(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List tenants with their limits (effective; '*' = the service default), live jobs and storage used."""

    settings = get_settings()
    with _admin_session() as s:
        rows = []
        for t in service.list_tenants(s):
            rows.append({"name": t.name, "id": t.id, "created": _when(t.created_at),
                         "max_running_jobs": limits.job_limit(t, settings), "max_running_jobs_is_default": t.max_running_jobs is None,
                         "live_jobs": limits.live_jobs(s, t.id),
                         "max_storage_bytes": limits.storage_limit(t, settings), "max_storage_bytes_is_default": t.max_storage_bytes is None,
                         "storage_used_bytes": limits.storage_used(s, t.id)})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    _table([{**r, "live jobs": f"{r['live_jobs']} / {r['max_running_jobs']}{'*' if r['max_running_jobs_is_default'] else ''}",
             "storage": f"{_human(r['storage_used_bytes'])} / {_human(r['max_storage_bytes'])}"
                        f"{'*' if r['max_storage_bytes_is_default'] else ''}"} for r in rows],
           ["name", "id", "live jobs", "storage", "created"])


@tenants_cli.command("set-limits")
def tenants_set_limits(name: str = typer.Argument(..., help="Tenant name or id."),
                       max_running_jobs: Optional[str] = typer.Option(None, "--max-running-jobs",
                                                                      help="A number, or 'default' for the service default."),
                       max_storage_bytes: Optional[str] = typer.Option(None, "--max-storage-bytes",
                                                                       help="A size (e.g. 50GiB), or 'default' for the service default.")) -> None:
    """Change a tenant's limits (options left out keep their value). Jobs already live are not stopped."""

    if max_running_jobs is None and max_storage_bytes is None:
        raise typer.BadParameter("give --max-running-jobs and/or --max-storage-bytes")
    jobs = _limit_arg(max_running_jobs, "--max-running-jobs", size=False)
    storage = _limit_arg(max_storage_bytes, "--max-storage-bytes", size=True)
    settings = get_settings()
    with _admin_session() as s:
        t = service.set_limits(s, name, max_running_jobs=jobs, max_storage_bytes=storage)
        _say(f"tenant {t.name!r}: at most {limits.job_limit(t, settings)} live jobs"
             f"{' (default)' if t.max_running_jobs is None else ''}, {limits.storage_limit(t, settings)} bytes "
             f"({_human(limits.storage_limit(t, settings))}){' (default)' if t.max_storage_bytes is None else ''}")


@keys_cli.command("create")
def keys_create(tenant: str = typer.Option(..., "--tenant", help="The tenant (name or id) the key acts as."),
                name: Optional[str] = typer.Option(None, "--name", help="A label, e.g. 'ci' or a person's name.")) -> None:
    """Create an API key and print it: this is the only time it is shown (only its sha256 is stored)."""

    settings = get_settings()
    with _admin_session() as s:
        row, key = service.create_key(s, tenant, name=name)
        tenant_name = service.get_tenant(s, row.tenant_id).name
    url = f"http://{settings.host}:{settings.port}"
    _say(f"created key {row.id} (prefix {row.prefix}) for tenant {tenant_name!r}. It is shown this once; store it now.\n"
         f"Use it as:  export STILLHOUSE_API_KEY=<key>   (read by the stillhouse command and the Python client)\n"
         f"       or:  stillhouse --api-key <key> jobs\n"
         f"       or:  curl -H 'Authorization: Bearer <key>' {url}/v1/jobs\n"
         f"Revoke it with: python -m app keys revoke {row.prefix}")
    print(key)


@keys_cli.command("list")
def keys_list(tenant: Optional[str] = typer.Option(None, "--tenant", help="Only this tenant's keys (name or id)."),
              as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List API keys: id, prefix, tenant, name, created, last used (to the minute), revoked. Never the key itself."""

    with _admin_session() as s:
        rows = [{"id": k.id, "prefix": k.prefix, "tenant": tname, "name": k.name or "", "created": _when(k.created_at),
                 "last_used": _when(k.last_used_at), "revoked": _when(k.revoked_at)} for k, tname in service.list_keys(s, tenant)]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    _table(rows, ["id", "prefix", "tenant", "name", "created", "last_used", "revoked"])


@keys_cli.command("revoke")
def keys_revoke(key: str = typer.Argument(..., metavar="KEY_ID_OR_PREFIX", help="The key's id (key_…) or prefix (sh_XXXXXXXX).")) -> None:
    """Revoke an API key: requests with it get 401 from now on. Revoking twice is harmless."""

    with _admin_session() as s:
        row, now = service.revoke_key(s, key)
    _say(f"key {row.id} ({row.prefix}) " + ("revoked" if now else f"was already revoked on {_when(row.revoked_at)}"))


def main() -> None:
    """Command-line entry: ``python -m app [serve|up|sweep|tenants …|keys …]`` (default ``serve``). Invalid
    ``STILLHOUSE_*`` settings end it with one line each and status 2."""

    settings_or_exit()
    cli(prog_name="python -m app")


if __name__ == "__main__":
    main()
