"""Pruning sweep trials (``budget.pruner``): a trial that is clearly behind stops early, with Optuna's own pruners.

The trainer (``distill.training.trainer``) records, at each epoch end, its metric rows through the job's reporter; the
row ``top1`` of split ``val`` is the student's top-1 on the trial's *selection* split (trials set ``data.selection``,
so ``val`` is carved from the training rows and the held-out validation split is never seen). ``TrialPruning``
watches those rows in the worker (``stillhouse.jobs.reporter.SqlReporter``'s ``prune_check``), reports each epoch's value
to the trial in the sweep's Optuna study (``Trial.report(value, step=epoch)``) and asks ``Trial.should_prune()``. When
the pruner says so, the reporter's ``should_stop`` turns true (stop reason ``pruned``), the trainer stops before its
next step (its existing stop check, no loop of its own), and the runner ends the job ``cancelled`` with error code
``trial_pruned`` and a message naming the epoch, the value and the pruner; nothing is published. The scheduler then
tells Optuna the trial was PRUNED (trial state ``pruned`` in ``GET /v1/sweeps/{id}/trials``, with the message as its
``reason``); pruned trials never enter the front.

Pruning is single-objective (Optuna's ``Trial.report`` refuses multi-objective studies): a sweep with a pruner must
have the one objective ``top1`` (``SweepSpec`` refuses others with 422). The last epoch is never pruned (the trial is
then as cheap to finish as to stop). A trial resumed on another worker reports its epochs again; Optuna keeps the first
value of a step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import optuna
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from distill.reporter import MetricRow
from stillhouse.models import Job, Sweep
from stillhouse.settings import Settings
from stillhouse.sweeps.scheduler import PRUNED_CODE, RUNNING, storage
from stillhouse.sweeps.spec import SweepSpec

log = logging.getLogger("stillhouse.sweeps")

__all__ = ["PRUNED_CODE", "TrialPruning", "for_job", "make_pruner"]
METRIC, SPLIT = "top1", "val"


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """Optuna's pruner for ``budget.pruner``: ``median`` → ``MedianPruner(n_startup_trials=2, n_warmup_steps=0)`` (no
    pruning before 2 trials completed; from epoch 1 on), ``successive_halving`` → ``SuccessiveHalvingPruner()`` (Optuna's
    defaults: min resource estimated from the first completed trial, reduction factor 4), ``none`` → ``NopPruner``.
    Raises ValueError for another name."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}")


class TrialPruning:
    """The pruning check of one running trial: ``observe(rows)`` → a message when the trial must stop, else None.

    ``study``: the sweep's Optuna study loaded with its pruner; ``trial_id`` / ``number``: the trial's id in the storage
    and number in the study; ``pruner``: its name (for the message); ``epochs``: the trial's ``training.epochs`` (the
    last one is never pruned)."""

    def __init__(self, study: optuna.Study, trial_id: int, number: int, pruner: str, epochs: int) -> None:
        self.study, self.number, self.pruner, self.epochs = study, number, pruner, epochs
        self.trial = optuna.trial.Trial(study, trial_id)

    def observe(self, rows: Sequence[MetricRow]) -> str | None:
        """Report each epoch-end selection-split top-1 among ``rows`` to the trial (step = epoch) and return why the
        trial is pruned, or None. Optuna storage errors are logged and read as "go on" (pruning is an optimisation)."""
        for r in rows:
            if r.name != METRIC or r.split != SPLIT or r.epoch >= self.epochs:
                continue
            try:
                self.trial.report(float(r.value), step=int(r.epoch))
                prune = self.trial.should_prune()
            except Exception:  # noqa: BLE001 - a failed report must not fail the trial
                log.exception("trial %d: could not report epoch %d to Optuna", self.number, r.epoch)
                return None
            if prune:
                return (f"pruned by the sweep's {self.pruner} pruner after epoch {r.epoch} of {self.epochs}: selection-split "
                        f"top-1 {r.value:.4f} is behind the other trials at that epoch")
        return None


def for_job(sessions: sessionmaker[Session], job_id: str, settings: Settings) -> TrialPruning | None:
    """The pruning check of job ``job_id`` when it is a trial of a running sweep with a pruner, else None (also when
    the study cannot be loaded: logged, the trial then runs unpruned)."""
    try:
        return _for_job(sessions, job_id, settings)
    except Exception:  # noqa: BLE001 - pruning is an optimisation; the trial runs either way
        log.exception("job %s: could not set up its sweep's pruner; it runs without", job_id)
        return None


def _for_job(sessions: sessionmaker[Session], job_id: str, settings: Settings) -> TrialPruning | None:
    with sessions() as s:
        job = s.get(Job, job_id)
        if job is None or job.sweep_id is None:
            return None
        sweep = s.get(Sweep, job.sweep_id)
        number = (job.job_metadata or {}).get("trial")
        if sweep is None or sweep.status != RUNNING or number is None:
            return None
        spec = SweepSpec.model_validate(sweep.spec)
        if spec.budget.pruner == "none":
            return None
        epochs = int((job.spec.get("training") or {}).get("epochs") or 1)
        study_name = sweep.study_name
    rdb = storage(settings)
    study = optuna.load_study(study_name=study_name, storage=rdb, pruner=make_pruner(spec.budget.pruner))
    trial_id = rdb.get_trial_id_from_study_id_trial_number(rdb.get_study_id_from_name(study_name), int(number))
    return TrialPruning(study, trial_id, int(number), spec.budget.pruner, epochs)
