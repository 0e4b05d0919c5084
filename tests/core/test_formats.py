"""Sniffing and inspecting uploads: every good format, and the bad and dangerous ones."""

from __future__ import annotations

import os
import pickle
import random
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from distill.errors import DistillError
from distill.formats import inspect_file, sniff
from distill.formats import read_dataset
from distill.models import build


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return build("mlp", {"input_shape": [1, 8, 8], "num_classes": 10, "hidden_sizes": [16]})


MLP_PARAMS = 64 * 16 + 16 + 16 * 10 + 10


def _expect(code: str, fn, *args, **kw) -> DistillError:
    with pytest.raises(DistillError) as e:
        fn(*args, **kw)
    assert e.value.code == code, e.value
    return e.value


# ------------------------------------------------------------------------------------------ good models


def test_safetensors_with_metadata(teacher_file):
    assert sniff(teacher_file.path) == "safetensors"
    info = inspect_file(teacher_file.path, "teacher")
    assert info.format == "safetensors"
    assert info.input_shape == [None, 1, 8, 8] and info.output_shape == [None, 10]
    assert info.details["architecture"]["name"] == "cnn"
    assert info.parameters == sum(p.numel() for p in build("cnn", info.details["architecture"]["kwargs"]).parameters())


def test_safetensors_without_metadata(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in _mlp().state_dict().items()}, str(path))
    info = inspect_file(path, "student_init")
    assert (info.format, info.parameters, info.input_shape) == ("safetensors", MLP_PARAMS, None)


@pytest.mark.parametrize("layout", ["zip", "legacy", "nested"])
def test_state_dict(tmp_path, layout):
    path = tmp_path / "w.pt"
    sd = _mlp().state_dict()
    if layout == "zip":
        torch.save(sd, path)
    elif layout == "legacy":
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    else:
        torch.save({"epoch": 7, "state_dict": sd}, path)
    assert sniff(path) == "state_dict"
    info = inspect_file(path, "teacher")
    assert info.format == "state_dict" and info.parameters == MLP_PARAMS


def test_torchscript(tmp_path):
    path = tmp_path / "m.pt"
    torch.jit.script(_mlp().eval()).save(str(path))
    assert sniff(path) == "torchscript"
    info = inspect_file(path, "teacher")
    assert info.format == "torchscript" and info.parameters == MLP_PARAMS


def test_onnx(tmp_path):
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_mlp().eval(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    assert sniff(path) == "onnx"
    info = inspect_file(path, "teacher")
    assert info.format == "onnx"
    assert info.parameters == MLP_PARAMS
    assert info.input_shape == [None, 1, 8, 8] and info.output_shape == [None, 10]


# ---------------------------------------------------------------------------------------- good datasets


def test_npz_with_labels_and_unlabelled_rows(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, X=np.random.rand(6, 1, 8, 8).astype(np.float32), y=np.array([0, 1, 2, -1, 1, -1]))
    assert sniff(path) == "npz"
    info = inspect_file(path, "dataset")
    assert info.details == {"samples": 6, "feature_shape": [1, 8, 8], "has_labels": True, "num_classes": 3, "unlabelled": 2}


def test_npz_x_only(tmp_path):
    path = tmp_path / "d.npz"
    np.savez_compressed(path, X=np.zeros((4, 64)))
    info = inspect_file(path, "dataset")
    assert info.details["has_labels"] is False and info.details["unlabelled"] == 4 and info.details["num_classes"] is None


def test_csv_with_label_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n0.5,1,0\n2,3e-1,1\n1,1,-1\n")
    assert sniff(path) == "csv"
    info = inspect_file(path, "dataset")
    assert info.details == {"samples": 3, "feature_shape": [2], "has_labels": True, "num_classes": 2, "unlabelled": 1,
                            "columns": ["a", "b", "label"]}
    x, y = read_dataset(path, "csv")
    assert x.dtype == np.float32 and x.tolist() == [[0.5, 1.0], [2.0, pytest.approx(0.3)], [1.0, 1.0]]
    assert y.tolist() == [0, 1, -1]


def test_csv_custom_label_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("target,f1,f2\n1,0,0\n0,1,1\n")
    info = inspect_file(path, "dataset", label_column="target")
    assert info.details["feature_shape"] == [2] and info.details["num_classes"] == 2
    # without naming it, 'target' is just a feature column
    assert inspect_file(path, "dataset").details["feature_shape"] == [3]


# ------------------------------------------------------------------------------------------ bad uploads


def test_truncated_safetensors(teacher_file, tmp_path):
    data = teacher_file.path.read_bytes()
    for cut in (len(data) // 2, 40):  # inside the tensor data, inside the header
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        err = _expect("invalid_file", sniff, bad)
        assert "truncated" in err.message
        _expect("invalid_file", inspect_file, bad, "teacher")


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.bin"
    path.write_bytes(random.Random(0).randbytes(4096))
    err = _expect("invalid_file", inspect_file, path, "teacher")
    assert "expected" in err.message


def test_empty_file(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    _expect("invalid_file", sniff, path)


class _Payload:
    """Unpickling this would run a shell command creating a marker file."""

    marker: str = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    _Payload.marker = str(marker)
    path = tmp_path / "evil.pt"
    if writer == "pickle":
        with open(path, "wb") as f:
            pickle.dump({"weight": _Payload()}, f, protocol=2)
    else:
        torch.save({"weight": _Payload()}, path)
    assert sniff(path) == "state_dict"
    err = _expect("unsafe_checkpoint", inspect_file, path, "teacher")
    assert "system" in err.message  # names the disallowed global (posix.system / nt.system)
    assert not marker.exists()


def test_pickled_module_is_unsafe(tmp_path):
    path = tmp_path / "full_model.pt"
    torch.save(_mlp(), path)
    err = _expect("unsafe_checkpoint", inspect_file, path, "teacher")
    assert "Sequential" in err.message or "torch.nn" in err.message


def test_checkpoint_with_non_tensor_entry(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"weight": torch.zeros(2), "note": "hello"}, path)
    err = _expect("invalid_file", inspect_file, path, "teacher")
    assert "'note'" in err.message and "str" in err.message


def test_npz_without_x(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, features=np.zeros((3, 2)))
    err = _expect("invalid_file", inspect_file, path, "dataset")
    assert "'X'" in err.message and "features" in err.message


def test_npz_with_object_array_is_refused(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, X=np.array([{"a": 1}, None], dtype=object))
    _expect("invalid_file", inspect_file, path, "dataset")


@pytest.mark.parametrize(
    "arrays,needle",
    [
        ({"X": np.zeros(5)}, "at least 2 dimensions"),
        ({"X": np.zeros((3, 2)), "y": np.array([0, 1])}, "shape (3,)"),
        ({"X": np.zeros((3, 2)), "y": np.array([0, 1, -2])}, ">= -1"),
        ({"X": np.zeros((3, 2)), "y": np.array([0.5, 1, 0])}, "integer"),
    ],
)
def test_npz_bad_arrays(tmp_path, arrays, needle):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    err = _expect("invalid_file", inspect_file, path, "dataset")
    assert needle in err.message


def test_dataset_with_infinite_values(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, X=np.array([[1.0, np.inf], [0.0, 0.0]]))
    err = _expect("invalid_file", inspect_file, path, "dataset")
    assert "infinity" in err.message


def test_csv_with_non_numeric_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("size,colour,label\n1,red,0\n2,blue,1\n")
    err = _expect("invalid_file", inspect_file, path, "dataset")
    assert "'colour'" in err.message and "red" in err.message


def test_dataset_uploaded_as_teacher(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, X=np.zeros((3, 2)))
    err = _expect("invalid_file", inspect_file, path, "teacher")
    assert err.message.startswith("expected a model checkpoint") and err.message.endswith("got NPZ")


def test_model_uploaded_as_dataset(teacher_file):
    err = _expect("invalid_file", inspect_file, teacher_file.path, "dataset")
    assert "expected a dataset" in err.message and "safetensors" in err.message


def test_unknown_purpose(teacher_file):
    with pytest.raises(ValueError):
        inspect_file(teacher_file.path, "weights")


def test_text_uploaded_as_teacher_says_what_it_was_sniffed_as(tmp_path):
    """A plain text file sniffs as a one-column CSV; the refusal says so rather than calling it 'CSV' outright."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my teacher model notes\nsecond line\n")
    err = _expect("invalid_file", inspect_file, notes, "teacher")
    assert err.message.startswith("expected a model checkpoint")
    assert err.message.endswith("got plain text (sniffed as CSV: no comma, semicolon or tab in its first line "
                                "'my teacher model notes', read as a one-column header)"), err.message
    table = tmp_path / "t.csv"
    table.write_text("a,b,label\n1,2,0\n")
    assert _expect("invalid_file", inspect_file, table, "teacher").message.endswith("got CSV text (header row 'a,b,label')")
    lines = tmp_path / "t.jsonl"
    lines.write_text('{"text": "hi"}\n')
    assert _expect("invalid_file", inspect_file, lines, "teacher").message.endswith("""got JSONL text (first line '{"text": "hi"}')""")
