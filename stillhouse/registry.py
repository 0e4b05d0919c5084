"""The model-registry export: a succeeded job with ``registry.mlflow`` in its spec is logged to that MLflow tracking
server as a run, and its student registered as a new model version (client: ``mlflow-skinny``'s ``MlflowClient``,
talking to the server's REST API; artifacts go through the server's artifact proxy, ``mlflow-artifacts:``).

The run: the spec as parameters (flattened, ``training.optimizer.lr``), the per-epoch metrics (``<split>/<name>``
at step = epoch, e.g. ``val/top1``, ``train_epoch/loss/kd``), the report as ``report.json``, the student's files
under ``student/``, tags ``stillhouse.job_id`` and ``stillhouse.teacher_sha256``. The model version: source
``<run artifacts>/student``, tags ``teacher_sha256``, ``compression_ratio``, ``top1`` (the student's validation top-1),
``teacher_top1``, ``agreement``, ``stillhouse.job_id``, and ``alias`` pointed at it when given.

The worker's HTTP calls are bounded (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` 3, ``MLFLOW_HTTP_REQUEST_TIMEOUT`` 30 s unless
set in the worker's environment), so an unreachable server fails the export within about a minute instead of
holding the worker for several. Credentials for a secured server come from the worker's environment
(``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``), never from the job spec.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from distill.spec import MlflowRegistrySpec

log = logging.getLogger("stillhouse.registry")

MAX_PARAM_VALUE = 6000  # MLflow's limit on a parameter value (characters)
MAX_TAG_VALUE = 5000
PARAMS_PER_BATCH, METRICS_PER_BATCH = 100, 1000  # MLflow's log_batch limits


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """``{"training": {"optimizer": {"lr": 0.001}}}`` -> ``{"training.optimizer.lr": "0.001"}``; lists as JSON, None
    left out, every value cut to ``MAX_PARAM_VALUE`` characters."""
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif value is not None:
        text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
        out[prefix] = text[:MAX_PARAM_VALUE]
    return out


def is_epoch_metric(name: str, split: str) -> bool:
    """Whether a recorded metric row is a per-epoch value (epoch means, validation, epoch-end top-1 and lr) rather than a
    per-step training loss."""
    return not (split.endswith("train") and name.startswith("loss/"))


def _batches(items: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _version_tags(job_id: str, report: dict[str, Any], teacher_sha256: str | None) -> dict[str, str]:
    student, teacher = report.get("student") or {}, report.get("teacher") or {}
    agreement = report.get("agreement")
    if isinstance(agreement, dict):  # causal LMs: next-token agreement, and the held-out perplexity
        agreement = agreement.get("top1_agreement")
    ppl = ((report.get("perplexity") or {}).get("student") or {}).get("perplexity")
    tags = {"stillhouse.job_id": job_id, "teacher_sha256": teacher_sha256, "compression_ratio": report.get("compression_ratio"),
            "top1": student.get("val_top1"), "teacher_top1": teacher.get("val_top1"), "agreement": agreement, "perplexity": ppl}
    return {k: str(v)[:MAX_TAG_VALUE] for k, v in tags.items() if v is not None}


def export_mlflow(cfg: MlflowRegistrySpec, *, job_id: str, job_name: str | None, spec: dict[str, Any], report: dict[str, Any],
                  metrics: Sequence[tuple[str, str, int, float]], files: dict[str, Path], teacher_sha256: str | None) -> dict[str, Any]:
    """Log job ``job_id`` to the tracking server of ``cfg`` and register its student.

    ``metrics``: ``(name, split, epoch, value)`` rows, per-epoch ones only; ``files``: artifact name -> local path.
    Returns ``{"status": "registered", tracking_uri, experiment_id, run_id, model_name, version, alias}``. Raises
    ``mlflow.exceptions.MlflowException`` (or a requests error) when the server refuses or cannot be reached; the run
    is then left FAILED when it was created.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    from mlflow import MlflowClient  # heavy (1-4 s): only workers exporting a job load it
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.experiment_name)
    experiment_id = exp.experiment_id if exp is not None else client.create_experiment(cfg.experiment_name)
    run = client.create_run(experiment_id, run_name=job_name or job_id,
                            tags={"stillhouse.job_id": job_id, **({"stillhouse.teacher_sha256": teacher_sha256} if teacher_sha256 else {})})
    run_id = run.info.run_id
    try:
        params = [Param(k, v) for k, v in flatten({k: v for k, v in spec.items() if k != "registry"}).items()]
        for chunk in _batches(params, PARAMS_PER_BATCH):
            client.log_batch(run_id, params=list(chunk))
        now = int(time.time() * 1000)
        rows = [Metric(f"{split}/{name}", float(value), now, int(epoch)) for name, split, epoch, value in metrics]
        for chunk in _batches(rows, METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=list(chunk))
        client.log_dict(run_id, report, "report.json")
        for name, path in sorted(files.items()):
            client.log_artifact(run_id, str(path), artifact_path="student")
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        try:
            client.set_terminated(run_id, "FAILED")
        except Exception:  # noqa: BLE001 - the first error is the one to report
            pass
        raise
    try:
        client.create_registered_model(cfg.model_name, description="Students distilled by stillhouse.")
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    mv = client.create_model_version(cfg.model_name, source=f"{run.info.artifact_uri}/student", run_id=run_id,
                                     tags=_version_tags(job_id, report, teacher_sha256),
                                     description=str(report.get("summary") or f"stillhouse job {job_id}")[:MAX_TAG_VALUE])
    if cfg.alias:
        client.set_registered_model_alias(cfg.model_name, cfg.alias, mv.version)
    log.info("job %s: registered %s version %s in %s (run %s)", job_id, cfg.model_name, mv.version, cfg.tracking_uri, run_id)
    return {"status": "registered", "tracking_uri": cfg.tracking_uri, "experiment_id": str(experiment_id), "run_id": run_id,
            "model_name": cfg.model_name, "version": str(mv.version), "alias": cfg.alias}
