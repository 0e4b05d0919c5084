"""All tables, in one place: tenants and API keys, files, jobs (+ their files, events, metrics, artifacts)."""

from app.models.base import Base, UTCDateTime, new_id, utcnow
from app.models.file import File
from app.models.job import Artifact, Job, JobEvent, JobFile, Metric
from app.models.tenant import DEFAULT_TENANT, ApiKey, Tenant

__all__ = ["DEFAULT_TENANT", "ApiKey", "Artifact", "Base", "File", "Job", "JobEvent", "JobFile", "Metric", "Tenant", "UTCDateTime",
           "new_id", "utcnow"]
