"""Sweeps for real: an API server and two Celery worker processes; one worker is killed (SIGKILL of its whole process
group) while it runs a trial, a new one is started, and the sweep still completes with every trial run once (the
killed trial resumes as any job does), the teacher's training outputs computed once for the sweep, and a front
whose held-out top-1 is reproduced from the downloaded student."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy import select

from distill.data import load_data
from distill.models import build
from distill.spec import DataSpec
from stillhouse.db import session_factory
from stillhouse.models import Job, SweepTrial
from tests.e2e.test_durability_e2e import cluster  # noqa: F401 - fixture
from tests.e2e.test_jobs_e2e import spec, wait_for

pytestmark = pytest.mark.e2e


def _trial_jobs(cl, sweep_id: str) -> list[Job]:
    with session_factory(cl.settings)() as s:
        return list(s.scalars(select(Job).where(Job.sweep_id == sweep_id)))


def test_sweep_survives_a_killed_worker_and_its_front_is_reproducible(cluster, digits_teacher, tmp_path):  # noqa: F811
    cl = cluster()
    w1 = cl.start_worker("w1")
    cl.start_worker("w2")
    c = cl.client
    teacher = c.upload(digits_teacher, "teacher")
    base = spec(teacher.id, **{"training.epochs": 25, "export.formats": ["safetensors"], "cache": {"teacher_outputs": "on"}})
    body = {"name": "e2e-sweep", "base": base, "sampler": {"name": "random", "seed": 1},
            "search_space": {"student.architecture.kwargs.hidden_sizes": {"type": "layers", "widths": [8, 64, 256], "depths": [1, 2]},
                             "method.temperature": {"type": "categorical", "choices": [2.0, 4.0]}},
            "budget": {"max_trials": 5, "max_parallel": 2}}
    sw = c.create_sweep(body)
    # kill w1 once a trial is well into training (w1 or w2 holds it: with prefetch 1 and 2 trials, each has one)
    def w1_trial():
        for j in _trial_jobs(cl, sw["id"]):
            if j.status == "running" and j.lease_owner and j.progress_epoch and j.progress_epoch >= 2:
                return j
        return None

    victim = wait_for(w1_trial, 300, "a trial training on a worker")
    os.killpg(w1.pid, signal.SIGKILL)
    w1.wait(timeout=30)
    cl.start_worker("w3")
    deadline = time.monotonic() + 900
    while (got := c.sweep(sw["id"]))["status"] == "running":
        assert time.monotonic() < deadline, (got, cl.log("api")[-3000:])
        time.sleep(1)
    assert got["status"] == "succeeded", (got, cl.log("w2")[-3000:], cl.log("api")[-3000:])
    jobs = _trial_jobs(cl, sw["id"])
    assert len(jobs) == 5 and all(j.status == "succeeded" for j in jobs), [(j.id, j.status, j.error_message) for j in jobs]
    assert sum(j.attempt for j in jobs) >= 6  # a trial resumed after the kill: the same job again, not a new trial
    with session_factory(cl.settings)() as s:
        rows = list(s.scalars(select(SweepTrial).where(SweepTrial.sweep_id == sw["id"])))
    assert sorted(r.number for r in rows) == [0, 1, 2, 3, 4] and all(r.told and r.state == "complete" for r in rows)
    # the teacher ran over the training rows once for the sweep (counted over every attempt: the killed one may be it)
    computed = [e for j in jobs for e in cl.events(j.id, "teacher_outputs_shared") if e.data["teacher_outputs"] == "computed"]
    assert len(computed) == 1, [(j.id, [e.data for e in cl.events(j.id, "teacher_outputs_shared")]) for j in jobs]
    assert all(t["teacher_outputs"] in ("computed", "reused") for t in c.sweep_trials(sw["id"]))
    front = c.sweep_front(sw["id"])
    assert front["final"] and front["data"]
    # each member's held-out top-1 is what its downloaded student scores on the validation split
    data = load_data(DataSpec.model_validate(base["data"]), {})
    for m in front["data"]:
        path = c.download(m["job_id"], "student.safetensors", tmp_path / m["job_id"])
        card = c.download(m["job_id"], "student.json", tmp_path / m["job_id"])
        meta = json.loads(card.read_text())["architecture"]
        model = build(meta["name"], meta["kwargs"])
        model.load_state_dict(load_file(str(path)))
        with torch.inference_mode():
            top1 = float((model.eval()(data.val_x).argmax(1) == data.val_y).float().mean())
        assert top1 == pytest.approx(m["holdout"]["student_val_top1"], abs=1e-4), m
    assert victim.id in {j.id for j in jobs}
