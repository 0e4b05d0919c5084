"""Odd and hostile PyTorch checkpoints: training checkpoints with non-tensor objects beside the state dict,
code-running payloads hidden inside allowed objects, DataParallel prefixes and weights that do not fit."""

from __future__ import annotations

import argparse
import fractions
import os
import pathlib
import pickle

import pytest
import torch

from distill.errors import DistillError
from distill.formats import inspect_file
from distill.teachers import load_teacher
from distill.formats import extract_state_dict, load_tensors
from distill.models import build

from tests.models import TEACHER_ARCH
from .helpers import make_spec, run

MLP = {"name": "mlp", "kwargs": {"input_shape": [1, 8, 8], "num_classes": 10, "hidden_sizes": [16]}}
MLP_PARAMS = 64 * 16 + 16 + 16 * 10 + 10


def _sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build(MLP["name"], MLP["kwargs"]).state_dict()


def _expect(code: str, fn, *args, **kw) -> DistillError:
    with pytest.raises(DistillError) as e:
        fn(*args, **kw)
    assert e.value.code == code, e.value
    return e.value


class Payload:
    """Unpickling this without restrictions would create ``marker`` (a shell command)."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_namespace_and_epoch_beside_the_state_dict_are_left_aside(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": _sd(), "args": argparse.Namespace(lr=0.1, arch="mlp"), "epoch": 3}, path)
    info = inspect_file(path, "teacher")
    assert info.format == "state_dict" and info.parameters == MLP_PARAMS
    (note,) = info.details["notes"]
    assert "'state_dict'" in note and "args (argparse.Namespace)" in note and "epoch (int)" in note
    tensors, _ = load_tensors(path, "state_dict")
    assert set(tensors) == set(_sd()) and all(torch.equal(tensors[k], v) for k, v in _sd().items())


def test_pytorch_tutorial_checkpoint_with_optimizer_state(tmp_path):
    """The layout of PyTorch's 'saving a general checkpoint' recipe: model and optimizer state side by side."""
    torch.manual_seed(0)
    model = build(MLP["name"], MLP["kwargs"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    opt.step()
    path = tmp_path / "general.pt"
    torch.save({"epoch": 5, "model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(), "loss": 0.25}, path)
    info = inspect_file(path, "teacher")
    assert info.parameters == MLP_PARAMS
    assert "'model_state_dict'" in info.details["notes"][0] and "optimizer_state_dict (dict)" in info.details["notes"][0]
    teacher = load_teacher(path, "state_dict", MLP, "cpu")
    assert any("model_state_dict" in n for n in teacher.notes)
    torch.testing.assert_close(teacher(torch.ones(2, 1, 8, 8)), model.eval()(torch.ones(2, 1, 8, 8)))


def test_code_inside_an_allowed_namespace_is_still_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "ns_payload.pt"
    torch.save({"state_dict": _sd(), "args": argparse.Namespace(hook=Payload(marker))}, path)
    err = _expect("unsafe_checkpoint", inspect_file, path, "teacher")
    assert "system" in err.message  # posix.system (nt.system on Windows) is named
    assert not marker.exists()


def test_every_disallowed_type_is_named(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"state_dict": _sd(), "data_dir": pathlib.PurePosixPath("/data"), "ratio": fractions.Fraction(1, 3)}, path)
    err = _expect("unsafe_checkpoint", inspect_file, path, "teacher")
    assert "pathlib.PurePosixPath" in err.message and "fractions.Fraction" in err.message, err.message


def test_namespace_called_with_arguments_by_a_crafted_pickle_runs_nothing(tmp_path):
    """REDUCE on the allowlisted class can only call Namespace(*args): positional arguments fail, nothing runs."""
    path = tmp_path / "crafted.pkl"
    # protocol 2: GLOBAL argparse.Namespace, ('touch x',), REDUCE, STOP
    path.write_bytes(b"\x80\x02cargparse\nNamespace\nq\x00X\x07\x00\x00\x00touch xq\x01\x85q\x02Rq\x03.")
    with pytest.raises(TypeError):
        pickle.loads(path.read_bytes())  # what a plain unpickler would do: Namespace('touch x') is a TypeError too
    err = _expect("invalid_file", inspect_file, path, "teacher")
    assert "unreadable PyTorch checkpoint" in err.message


def test_several_state_dicts_under_unknown_keys_are_refused_by_name():
    err = _expect("invalid_file", extract_state_dict, {"student": _sd(), "ema": _sd(), "epoch": 1})
    assert "'student'" in err.message and "'ema'" in err.message


def test_a_single_state_dict_under_an_unknown_key_is_found():
    tensors, notes = extract_state_dict({"weights_ema": _sd(), "step": 100})
    assert set(tensors) == set(_sd()) and "'weights_ema'" in notes[0] and "step (int)" in notes[0]


def test_a_non_tensor_inside_the_state_dict_is_named():
    err = _expect("invalid_file", extract_state_dict, {"state_dict": {**_sd(), "version": 2}, "epoch": 1})
    assert "'version'" in err.message and "int" in err.message


def test_job_report_says_what_was_done_to_a_dataparallel_training_checkpoint(teacher_model, tmp_path):
    path = tmp_path / "dp_ckpt.pt"
    sd = {f"module.{k}": v for k, v in teacher_model.state_dict().items()}
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1), "epoch": 8}, path)
    from distill.formats import FileInput

    arch = {"name": TEACHER_ARCH["name"], "kwargs": {**TEACHER_ARCH["kwargs"], "input_shape": [1, 8, 8], "num_classes": 10}}
    spec = make_spec(teacher={"file_id": "file_teacher", "architecture": arch}, training={"epochs": 1})
    result, _ = run(spec, FileInput(path, "state_dict", path.stat().st_size), tmp_path / "job")
    notes = result.report["teacher"]["notes"]
    assert any("'module.' prefix" in n for n in notes), notes
    assert any("'state_dict'" in n and "argparse.Namespace" in n for n in notes), notes
    assert result.report["teacher"]["val_top1"] > 0.9  # the weights really loaded


def test_job_with_weights_that_do_not_fit_fails_listing_the_keys(teacher_file, tmp_path):
    wrong = {"name": "mlp", "kwargs": {"input_shape": [1, 8, 8], "num_classes": 10, "hidden_sizes": [32]}}
    spec = make_spec(teacher={"file_id": "file_teacher", "architecture": wrong}, training={"epochs": 1})
    err = _expect("shape_mismatch", run, spec, teacher_file, tmp_path / "job")
    assert err.param == "teacher.architecture"
    # the cnn teacher's conv/BN keys against an mlp: the first few of each kind, with counts
    assert "missing keys (2): 3.weight, 3.bias" in err.message, err.message
    assert "unexpected keys (16): 0.bias, 0.weight, 1.num_batches_tracked" in err.message, err.message
    assert "wrong shapes (file vs architecture): 1.weight [16] vs [32, 64]" in err.message, err.message
