"""One pydantic-settings ``Settings`` shared by the API and the worker (env prefix ``STILLHOUSE_``).

The defaults are the *embedded* configuration: a SQLite file, Celery's filesystem broker
transport (needs no server) and artifacts under ``./var/``. Production sets
``STILLHOUSE_DATABASE_URL`` (PostgreSQL), ``STILLHOUSE_BROKER_URL`` (Redis) and either
``STILLHOUSE_ARTIFACT_URL=s3://bucket/prefix`` (an S3-compatible object store; then every process keeps only
scratch files in its own ``STILLHOUSE_DATA_DIR``) or a ``STILLHOUSE_DATA_DIR`` every process shares.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import ByteSize, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration read from ``STILLHOUSE_*`` environment variables (or a ``.env`` file)."""

    model_config = SettingsConfigDict(env_prefix="STILLHOUSE_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("var"), description="Root of uploads, artifacts, checkpoints and the embedded database/broker.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: sqlite file <data_dir>/stillhouse.db.")
    broker_url: str = Field("filesystem://", description="Celery broker URL; 'filesystem://' is the embedded transport under <data_dir>/broker.")
    host: str = Field("127.0.0.1", description="API bind address.")
    port: int = Field(8000, ge=1, le=65535, description="API port.")
    max_upload_bytes: ByteSize = Field(2 * 1024**3, ge=1, description="Largest accepted upload, bytes; larger ones get 413.")
    max_unpacked_bytes: ByteSize = Field(4 * 1024**3, ge=1, description="Largest unpacked size of an uploaded Hugging Face archive, bytes; larger ones get 422.")
    upload_chunk_bytes: ByteSize = Field(1024 * 1024, ge=4096, description="Chunk size used when streaming uploads and downloads, bytes.")
    worker_concurrency: int = Field(1, ge=1, description="Jobs one worker process runs at once (Celery prefork children).")
    shared_teacher_cache: bool = Field(True, description="Workers share a teacher's measurements (latency, FLOPs, validation "
                                       "logits) and its outputs on the training rows through the artifact store "
                                       "(cache/teachers/...), so jobs and sweep trials of one teacher run it once; false: every "
                                       "job computes its own.")
    torch_threads: int | None = Field(
        None, ge=1, description="PyTorch intra-op threads per job; default: cores available / worker concurrency."
    )
    queue: str = Field("cpu", min_length=1, description="Celery queue of CPU jobs (training.device 'cpu' or 'auto').")
    gpu_queue: str = Field("gpu", min_length=1, description="Celery queue of GPU jobs (training.device 'cuda').")
    worker_queues: str | None = Field(
        None, description="Comma-separated queues a worker consumes (e.g. 'gpu' or 'cpu,gpu'); default: both on a machine "
                          "where PyTorch sees CUDA (GPU queue first), else the CPU queue.")
    worker_heartbeat_s: float = Field(
        10.0, gt=0, description="Seconds between a worker's records of itself (its queues) in the database; a worker not seen "
                                "for three times that is taken as gone, and a queued job no live worker consumes says so.")
    artifact_url: str | None = Field(
        None, description="Where uploads, checkpoints and artifacts live: unset = the local directory <data_dir> (shared by "
                          "every process); 's3://bucket/prefix' = an S3-compatible object store (then <data_dir> holds only "
                          "each process's scratch files and caches).")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint, e.g. http://seaweedfs:8333 (unset: AWS S3).")
    s3_region: str | None = Field(None, description="S3 region (unset: boto3's default, us-east-1 for custom endpoints).")
    s3_access_key_id: str | None = Field(None, description="S3 access key (unset: boto3's chain: AWS_* variables, ~/.aws, instance role).")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key (unset: boto3's chain).")
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "path", description="S3 URL style: 'path' (bucket in the path; SeaweedFS, MinIO) or 'virtual' (bucket in the host name).")
    s3_part_bytes: ByteSize = Field(16 * 1024**2, ge=5 * 1024**2, description="Part size of multipart uploads and ranged "
                                    "downloads, bytes (S3's minimum part is 5 MiB); memory per transfer is about this times "
                                    "s3_max_concurrency.")
    s3_max_concurrency: int = Field(4, ge=1, le=64, description="Parts one transfer moves at once.")
    cache_max_bytes: ByteSize = Field(
        20 * 1024**3, ge=0, description="With object storage: most bytes of downloaded inputs (teachers, datasets) a process keeps "
                                        "under <data_dir>/cache for later jobs; least recently used go first.")
    mlflow_allowed_tracking_uris: str | None = Field(
        None, description="Comma-separated URI prefixes a job's registry.mlflow.tracking_uri must start with (e.g. "
                          "'http://mlflow.internal:5000/'); unset = any http(s) URI. Set it when tenants must not make "
                          "workers connect elsewhere.")
    visibility_timeout_s: int = Field(
        6 * 3600, ge=1, description="Redis: seconds before an unacknowledged job message is delivered again (the job lease makes "
                                    "a second delivery of a running job exit at once).")
    max_attempts: int = Field(
        3, ge=1, description="Starts of one job after its worker died (attempt - hand-backs) before it fails with worker_lost.")
    lease_ttl_s: float = Field(
        30.0, gt=0, description="Seconds a worker's lease on a running job lasts; its heartbeat renews it every third of that. "
                                "A job whose lease expired is sent again by the sweep.")
    sweep_interval_s: float = Field(
        10.0, gt=0, description="Seconds between sweeps (in the API and in every worker's main process) that re-send unsent "
                                "jobs and jobs whose worker died, and fail jobs no worker took up.")
    worker_lost_timeout_s: float = Field(
        1800.0, gt=0, description="Seconds after a running job's lease expired (its worker died) before the sweep fails it "
                                  "with worker_lost, when no worker has taken it up again.")
    unsent_grace_s: float = Field(
        10.0, gt=0, description="Seconds a queued job may stay unsent (row committed, message never sent: the API died "
                                "between the two) before the sweep sends it.")
    unclaimed_resend_s: float = Field(
        120.0, gt=0, description="Seconds a queued job whose message was sent may stay unclaimed, while a live worker of its "
                                 "queue has a free slot, before the sweep sends it again (its message was taken off the "
                                 "broker and lost: a worker killed between receiving it and claiming the job); again at most "
                                 "once per this period. A second delivery of a message that was not lost is harmless.")
    progress_interval_s: float = Field(0.5, gt=0, description="Least seconds between progress/cancel-check writes to SQL.")
    max_student_parameters: int = Field(
        1_000_000_000, ge=1, description="Largest student (parameters) a job may ask for; more gets 422 student_too_large. "
                                         "Training takes about 16 bytes per parameter (fp32 weights, gradients, AdamW state).")
    auth: Literal["auto", "required", "off"] = Field(
        "auto", description="API keys: 'auto' = off when bound to loopback (host 127.0.0.0/8, ::1, localhost), required otherwise; "
                            "'required'; 'off' (refused at start-up unless the host is loopback).")
    max_running_jobs_per_tenant: int = Field(
        50, ge=1, description="Live jobs (queued, running, cancelling) one tenant may have; more get 429. A tenant's own "
                              "max_running_jobs overrides it.")
    max_storage_bytes_per_tenant: ByteSize = Field(
        100 * 1024**3, ge=1, description="Bytes one tenant may store (its uploads + its jobs' artifacts); an upload over it gets "
                                         "413. A tenant's own max_storage_bytes overrides it.")
    db_pool_size: int = Field(
        20, ge=1, le=200, description="SQL connections one process keeps open (PostgreSQL; 20 more may open in bursts). The API "
        "runs at most this many request threads, so requests neither wait for a connection nor open and close extra ones.")
    events_poll_interval_s: float = Field(
        0.25, gt=0, le=60, description="Seconds between the database reads of an open event stream "
        "(GET /v1/jobs/{id}/events/stream): an event reaches its SSE clients within about this time.")
    webhook_allow_private_targets: bool = Field(
        False, description="Let webhook endpoints target loopback, link-local and private addresses (refused by default: "
        "a tenant could otherwise make the workers call internal services). For a receiver inside your own network.")
    webhook_timeout_s: float = Field(10.0, gt=0, le=120, description="Seconds one webhook attempt may take before it counts as failed.")
    webhook_retry_schedule_s: list[float] = Field(
        [5, 300, 1800, 7200, 18000, 36000, 36000], min_length=0,
        description="Seconds to wait before each retry of a failed webhook delivery (±10% jitter), as a JSON list; when it is "
        "used up the delivery fails. Default: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (8 attempts over about 27 h).")
    webhook_poll_interval_s: float = Field(1.0, gt=0, description="Seconds between a worker's looks for due webhook deliveries.")
    webhook_secret_grace_s: float = Field(
        86400.0, ge=0, description="Seconds the previous secret of a rotated webhook endpoint still signs (beside the new one).")
    db_ping_idle_s: float = Field(
        10.0, ge=0, description="A pooled SQL connection idle this many seconds or more is pinged (SELECT 1) before use and "
        "replaced when the database dropped it; 0 pings before every use (a round trip per request).")

    @field_validator("artifact_url")
    @classmethod
    def _artifact_url(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        u = urlparse(v)
        if u.scheme != "s3" or not u.netloc:
            raise ValueError("expected s3://bucket[/prefix] (or unset for the local directory <data_dir>)")
        return v

    @property
    def s3_bucket_prefix(self) -> tuple[str, str]:
        """``(bucket, prefix)`` of ``artifact_url`` (prefix without slashes at either end, may be empty)."""
        u = urlparse(self.artifact_url or "")
        return u.netloc, u.path.strip("/")

    def consumed_queues(self, has_cuda: bool) -> list[str]:
        """The queues a worker consumes: ``worker_queues``, else both (GPU first) when ``has_cuda`` (so no CPU job is left
        waiting on a GPU-only machine; a GPU worker that must keep free for GPU jobs sets ``gpu``), else the CPU queue."""
        if self.worker_queues:
            return [q.strip() for q in self.worker_queues.split(",") if q.strip()]
        return [self.gpu_queue, self.queue] if has_cuda else [self.queue]

    @property
    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL in force: ``database_url`` or the embedded SQLite file. The file's path is resolved once per
        data directory (and working directory, for a relative one): every request asks for the engine, and a
        ``Path.resolve()`` each time took 11% of a status read's CPU."""
        if self.database_url:
            return self.database_url
        return _sqlite_url(self.data_dir, "" if self.data_dir.is_absolute() else os.getcwd())

    @property
    def is_embedded_broker(self) -> bool:
        """True when the broker is the server-less filesystem transport."""
        return self.broker_url.startswith("filesystem://")

    def resolved_torch_threads(self) -> int:
        """Intra-op threads for one job: the setting, else ``cores available // worker_concurrency`` (≥ 1).

        Oversubscription is the trap this avoids: on a 2-core machine with another busy process,
        torch's default of one thread per core made a KD step over 10x slower than 1 thread.
        """
        if self.torch_threads:
            return self.torch_threads
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS / Windows
            cores = os.cpu_count() or 1
        return max(1, cores // self.worker_concurrency)


@lru_cache(maxsize=64)
def _sqlite_url(data_dir: Path, cwd: str) -> str:
    return f"sqlite:///{(Path(cwd) / data_dir / 'stillhouse.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests clear the cache with ``get_settings.cache_clear()``)."""
    return Settings()


def settings_or_exit() -> Settings:
    """The settings, or exit with status 2 and one line per invalid ``STILLHOUSE_*`` variable (instead of a
    traceback). Sizes in bytes accept units (``2GiB``, ``500MB``); see pydantic's ``ByteSize``."""
    try:
        return get_settings()
    except ValidationError as e:
        lines = [f"STILLHOUSE_{'_'.join(str(p) for p in err['loc']).upper()}={err.get('input')!r}: {err['msg']}" for err in e.errors()]
        print("stillhouse: invalid settings:\n  " + "\n  ".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
