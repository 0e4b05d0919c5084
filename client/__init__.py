"""Python client and ``stillhouse`` command line for the stillhouse API."""

from client.api import ApiError, Artifact, Event, FileInfo, Job, Metric, Stillhouse

__all__ = ["ApiError", "Artifact", "Event", "FileInfo", "Job", "Metric", "Stillhouse"]
