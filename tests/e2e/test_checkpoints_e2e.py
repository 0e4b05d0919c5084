"""Odd teacher checkpoints through the whole service (real HTTP, real worker): a DataParallel training
checkpoint with an argparse.Namespace beside its state dict is accepted and the job report says what was
done; weights that do not fit the named architecture fail the job with the first missing/unexpected keys."""

from __future__ import annotations

import argparse

import pytest
import torch

from tests.e2e.test_jobs_e2e import spec

pytestmark = pytest.mark.e2e

CNN = {"name": "cnn", "kwargs": {"channels": [16, 32], "hidden": 64, "input_shape": [1, 8, 8], "num_classes": 10}}


@pytest.fixture(scope="module")
def dp_checkpoint(digits_teacher, tmp_path_factory):
    """The digits CNN teacher saved as a DataParallel training checkpoint: module.-prefixed state dict, args, epoch."""
    from safetensors.torch import load_file

    sd = {f"module.{k}": v for k, v in load_file(str(digits_teacher)).items()}
    path = tmp_path_factory.mktemp("ckpt") / "dp_checkpoint.pt"
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1, arch="cnn"), "epoch": 6}, path)
    return path


@pytest.mark.backend_only("sqlite", reason="checkpoint loading is the core's, whatever the backend")
def test_dataparallel_training_checkpoint_is_accepted_and_the_report_says_so(live, dp_checkpoint):
    c = live.client
    f = c.upload(dp_checkpoint, "teacher")
    assert f.format == "state_dict"
    assert f.details["module_prefix"] is True and "argparse.Namespace" in f.details["notes"][0]
    job = c.wait(c.create_job(spec(f.id, **{"teacher.architecture": CNN, "training.epochs": 1})).id, timeout_s=180)
    assert job.status == "succeeded", job.error
    notes = c.report(job.id).teacher.notes
    assert any("'module.' prefix" in n and "DataParallel" in n for n in notes), notes
    assert any("'state_dict'" in n and "args (argparse.Namespace)" in n and "epoch (int)" in n for n in notes), notes
    assert c.report(job.id).teacher.val_top1 > 0.9  # the teacher's own weights were used


@pytest.mark.backend_only("sqlite", reason="checkpoint loading is the core's, whatever the backend")
def test_weights_not_fitting_the_architecture_fail_the_job_listing_keys(live, dp_checkpoint):
    c = live.client
    f = c.upload(dp_checkpoint, "teacher")
    wrong = {"name": "cnn", "kwargs": {**CNN["kwargs"], "channels": [16, 32, 64]}}
    job = c.wait(c.create_job(spec(f.id, **{"teacher.architecture": wrong, "training.epochs": 1})).id, timeout_s=180)
    assert job.status == "failed" and job.error.code == "shape_mismatch", job
    msg = job.error.message
    # the third conv block the file lacks, and the file's classifier where the architecture has more layers
    assert msg.startswith("the teacher weights do not match the architecture: missing keys (9): 8.weight, 8.bias, "), msg
    assert "unexpected keys (2): 11.bias, 11.weight" in msg, msg
    assert "wrong shapes (file vs architecture): 9.weight [64, 128] vs [64]" in msg, msg
    assert c.artifacts(job.id) == []
