"""All tables, in one place: files, jobs (+ their files, events, metrics, artifacts)."""

from app.models.base import Base, UTCDateTime, new_id, utcnow
from app.models.file import File
from app.models.job import Artifact, Job, JobEvent, JobFile, Metric

__all__ = ["Artifact", "Base", "File", "Job", "JobEvent", "JobFile", "Metric", "UTCDateTime", "new_id", "utcnow"]
