"""All tables, in one place: tenants and API keys, files, jobs (+ their files, events, metrics, artifacts), workers, sweeps (+ their trials),
webhook endpoints (+ their deliveries and attempts)."""

from stillhouse.models.base import Base, UTCDateTime, new_id, utcnow
from stillhouse.models.file import File
from stillhouse.models.job import Artifact, Job, JobEvent, JobFile, Metric
from stillhouse.models.sweep import Sweep, SweepTrial
from stillhouse.models.tenant import DEFAULT_TENANT, ApiKey, Tenant
from stillhouse.models.webhook import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from stillhouse.models.worker import Worker

__all__ = ["DEFAULT_TENANT", "ApiKey", "Artifact", "Base", "File", "Job", "JobEvent", "JobFile", "Metric", "Sweep", "SweepTrial", "Tenant", "UTCDateTime",
           "WebhookAttempt", "WebhookDelivery", "WebhookEndpoint", "Worker", "new_id", "utcnow"]
