"""Teachers as teams ship them (issue 10): torch.export programs, feature methods on every format, outputs that are not
logits, class counts, tied weights, non-finite teachers and backend errors that keep their operative line."""

from __future__ import annotations

import io
import json
import warnings
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_model as st_save_model
from torch import nn

from distill.errors import DistillError
from distill.formats import FileInput, inspect_file, sniff
from distill.models import build
from distill.teachers import load_teacher

from tests.files import Boom, torch_export_file

from .helpers import make_spec, run

FORMATS = ("torch_export", "onnx", "torchscript")
LAYERS = ["features.3", "features", "classifier.2", "penultimate"]


@pytest.fixture(scope="module")
def batch(digits):
    return torch.from_numpy(digits["x"][digits["val_idx"][:37]])


def _eager_features(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        f = model.features(x)
        hidden = model.classifier[2](model.classifier[1](model.classifier[0](f)))
    return {"features.3": model.features[3](model.features[2](model.features[1](model.features[0](x)))), "features": f,
            "classifier.2": hidden, "penultimate": hidden}


# ----------------------------------------------------------------------------------------------- torch.export


def test_torch_export_program_is_sniffed_inspected_and_run(shipped_cnn, shipped_teachers, batch, tmp_path):
    path = shipped_teachers["torch_export"].path
    assert sniff(path) == "torch_export"
    info = inspect_file(path, "teacher")
    assert info.parameters == sum(p.numel() for p in shipped_cnn.parameters())
    assert info.input_shape == [None, 1, 8, 8] and info.output_shape == [None, 10] and info.details["dynamic_batch"] is True
    assert {"features.3", "classifier.3", "penultimate"} <= set(info.details["layers"])
    t = load_teacher(path, "auto", None)
    assert t.format == "torch_export" and t.input_shape == [1, 8, 8] and t.num_classes == 10
    with torch.no_grad():
        assert torch.allclose(t(batch), shipped_cnn(batch), atol=1e-5)
    # exported with a static batch of 4: odd batches run in padded chunks, same logits
    fixed = torch_export_file(tmp_path, shipped_cnn, torch.zeros(4, 1, 8, 8), dynamic_batch=False)
    assert inspect_file(fixed, "teacher").details["dynamic_batch"] is False
    tf = load_teacher(fixed, "torch_export", None)
    out, feats = tf.features(batch, ["features.3"])
    with torch.no_grad():
        assert out.shape == (37, 10) and torch.allclose(out, shipped_cnn(batch), atol=1e-5)
        assert torch.allclose(feats["features.3"], _eager_features(shipped_cnn, batch)["features.3"], atol=1e-5)


def _rewrite(src, dst, replace: dict[str, bytes], add: dict[str, bytes] | None = None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            for suffix, new in replace.items():
                if item.filename.endswith(suffix):
                    data = new
            zout.writestr(item, data)
        for name, data in (add or {}).items():
            zout.writestr(name, data)
    return dst


def test_torch_export_archive_pickles_are_audited_before_torch_loads_them(shipped_teachers, tmp_path):
    src = shipped_teachers["torch_export"].path
    prefix = next(n for n in zipfile.ZipFile(src).namelist() if n.endswith("archive_format"))[: -len("archive_format")]
    marker = tmp_path / "pwned"
    evil = io.BytesIO()
    torch.save({"x": Boom(marker)}, evil)
    # (3) sample inputs: torch would fall back to weights_only=False
    bad_inputs = _rewrite(src, tmp_path / "inputs.pt2", {"data/sample_inputs/model.pt": evil.getvalue()})
    # (1) a weight marked use_pickle
    cfg_name = f"{prefix}data/weights/model_weights_config.json"
    cfg = json.loads(zipfile.ZipFile(src).read(cfg_name))
    first = next(iter(cfg["config"]))
    cfg["config"][first]["use_pickle"] = True
    bad_weight = _rewrite(src, tmp_path / "weight.pt2", {"model_weights_config.json": json.dumps(cfg).encode(),
                                                         f"data/weights/{cfg['config'][first]['path_name']}": evil.getvalue()})
    # (5) compiled code
    aoti = _rewrite(src, tmp_path / "aoti.pt2", {}, {f"{prefix}data/aotinductor/model/model.so": b"\x7fELF"})
    # (4) a legacy pickled weights file, which torch would read with weights_only=False
    legacy = _rewrite(src, tmp_path / "legacy.pt2", {}, {f"{prefix}data/weights/model.pt": evil.getvalue()})
    for path in (bad_inputs, bad_weight, aoti, legacy):
        assert sniff(path) == "torch_export"
        for call in (lambda: inspect_file(path, "teacher"), lambda: load_teacher(path, "torch_export", None)):
            with pytest.raises(DistillError) as e:
                call()
            assert e.value.code == "unsafe_checkpoint", e.value.message
    assert not marker.exists()


# --------------------------------------------------------------------------------------- features, every format


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_logits_and_features_by_module_path(fmt, shipped_cnn, shipped_teachers, batch):
    t = load_teacher(shipped_teachers[fmt].path, fmt, None)
    logits, feats = t.features(batch, LAYERS, "method.teacher_layer")
    ref = _eager_features(shipped_cnn, batch)
    with torch.no_grad():
        assert torch.allclose(logits, shipped_cnn(batch), atol=1e-4)
    for name in LAYERS:
        assert feats[name].shape == ref[name].shape and torch.allclose(feats[name], ref[name], atol=1e-4), (fmt, name)
    listed = {d["name"]: d for d in t.list_layers([1, 8, 8])}
    assert listed["features.3"]["output_shape"] == [32, 4, 4] and listed["classifier.0"]["output_shape"] == [512]
    assert listed["penultimate"]["output_shape"] == [64]


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_teacher_layer_names_the_model_and_the_nearest_layers(fmt, shipped_teachers, batch):
    t = load_teacher(shipped_teachers[fmt].path, fmt, None)
    with pytest.raises(DistillError) as e:
        t.features(batch, ["feature.3"], "method.teacher_layer")
    msg = e.value.message
    assert e.value.code == "invalid_spec" and e.value.param == "method.teacher_layer"
    assert "'feature.3'" in msg and "nearest: features.3" in msg and t.name in msg and "features.0" in msg


class _Skip(nn.Module):
    """A block whose forward is not the chain of its children (a skip connection)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x)) + x


def test_torchscript_layers_are_the_chain_its_graph_allows(batch, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), _Skip(), nn.Flatten(), nn.Linear(256, 10)).eval()
    t = load_teacher(_script_file(model, tmp_path / "skip.ts").path, "torchscript", None)
    names = [d["name"] for d in t.list_layers([1, 8, 8])]
    assert names == ["0", "1", "2", "3", "penultimate"]  # the skip block is one opaque layer: 1.conv is not given
    with pytest.raises(DistillError) as e:
        t.features(batch, ["1.conv"], "method.teacher_layer")
    assert "its layers are: 0, 1, 2, 3, penultimate" in e.value.message
    _, feats = t.features(batch, ["1", "penultimate"])
    with torch.no_grad():
        h = model[1](model[0](batch))
    assert torch.allclose(feats["1"], h, atol=1e-5) and torch.allclose(feats["penultimate"], h.flatten(1), atol=1e-5)


# --------------------------------------------------------------------------------- jobs on every format (Done means)


def _job_spec(method: dict, **over) -> object:
    return make_spec(method=method, training={"epochs": 4}, **over)


METHODS = {
    "kd": {"name": "kd", "temperature": 4.0, "alpha": 0.9},
    "fitnet": {"name": "fitnet", "alpha": 0.5, "student_layer": "2", "teacher_layer": "classifier.2"},
    "prototype": {"name": "prototype", "alpha": 0.5},
}


@pytest.mark.parametrize("method", list(METHODS))
def test_methods_distil_the_same_cnn_alike_on_every_format(method, shipped_teachers, tmp_path):
    top1 = {}
    for fmt in FORMATS:
        result, _ = run(_job_spec(METHODS[method]), shipped_teachers[fmt], tmp_path / fmt)
        r = result.report
        assert r["teacher"]["format"] == fmt and r["teacher"]["val_top1"] > 0.9
        assert r["cache"]["teacher_outputs"] is True  # features come from the teacher-output cache too
        top1[fmt] = r["student"]["val_top1"]
    print(f"\n{method}: " + ", ".join(f"{k} {v:.4f}" for k, v in top1.items()))
    assert max(top1.values()) - min(top1.values()) <= 0.01, top1
    assert min(top1.values()) > 0.8, top1


def test_onnx_features_per_step_without_the_cache(shipped_teachers, tmp_path):
    spec = make_spec(method=METHODS["fitnet"], training={"epochs": 2})
    cached, _ = run(spec, shipped_teachers["onnx"], tmp_path / "cached")
    live, _ = run(spec.model_copy(update={"cache": spec.cache.model_copy(update={"teacher_outputs": "off"})}),
                  shipped_teachers["onnx"], tmp_path / "live")
    assert cached.report["cache"]["teacher_outputs"] is True and live.report["cache"]["teacher_outputs"] is False
    # onnxruntime computes a row the same in any batch: per-step features equal the cached ones
    assert live.report["student"]["val_top1"] == pytest.approx(cached.report["student"]["val_top1"], abs=0.005)
    assert live.report["training"]["final_loss_terms"]["fitnet"] == pytest.approx(
        cached.report["training"]["final_loss_terms"]["fitnet"], rel=1e-3)


# ------------------------------------------------------------------------------------ outputs that are not logits


class _Ending(nn.Module):
    def __init__(self, inner: nn.Module, how: str) -> None:
        super().__init__()
        self.inner, self.how = inner, how

    def forward(self, x):
        z = self.inner(x)
        return torch.softmax(z, 1) if self.how == "softmax" else torch.log_softmax(z, 1)


def _script_file(model: nn.Module, path) -> FileInput:
    torch.jit.script(model.eval()).save(str(path))
    return FileInput(path, "torchscript", path.stat().st_size)


def test_softmax_ending_teacher_gives_the_logits_twin_student(shipped_cnn, shipped_teachers, tmp_path):
    spec = _job_spec(METHODS["kd"])
    twin, _ = run(spec, shipped_teachers["torchscript"], tmp_path / "logits")
    soft, _ = run(spec, _script_file(_Ending(shipped_cnn, "softmax"), tmp_path / "soft.ts"), tmp_path / "soft")
    logp, _ = run(spec, _script_file(_Ending(shipped_cnn, "log_softmax"), tmp_path / "logp.ts"), tmp_path / "logp")
    t = twin.report
    for r, kind in ((soft.report, "probabilities"), (logp.report, "log-probabilities")):
        assert abs(r["student"]["val_top1"] - t["student"]["val_top1"]) <= 0.005
        assert any(f"detected as {kind}" in n for n in r["teacher"]["notes"]), r["teacher"]["notes"]
        # kd loss on the same weights as the twin's (1.99 vs 0.022 when softmaxed twice)
        assert r["training"]["final_loss_terms"]["kd"] == pytest.approx(t["training"]["final_loss_terms"]["kd"], rel=0.02)
        assert r["ece"]["teacher"] == pytest.approx(t["ece"]["teacher"], abs=0.005)  # 0.76 when softmaxed twice
    assert any("taken as logits" in n for n in t["teacher"]["notes"])


def test_declared_outputs_must_fit_the_first_batch(shipped_teachers, tmp_path):
    spec = make_spec(teacher={"file_id": "file_teacher", "outputs": "probabilities"}, training={"epochs": 1})
    with pytest.raises(DistillError) as e:
        run(spec, shipped_teachers["onnx"], tmp_path / "job")
    assert e.value.code == "invalid_spec" and e.value.param == "teacher.outputs" and "sum to 1" in e.value.message


# --------------------------------------------------------------------------------------------------- class counts


class _Twelve(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        z = self.inner(x)
        return torch.cat([z, z[:, :2] - 5.0], 1)


def test_class_count_mismatch_is_refused_unless_the_spec_chooses(shipped_cnn, tmp_path):
    teacher = _script_file(_Twelve(shipped_cnn), tmp_path / "twelve.ts")
    with pytest.raises(DistillError) as e:
        run(make_spec(training={"epochs": 1}), teacher, tmp_path / "default")
    assert e.value.code == "invalid_spec" and e.value.param == "student.architecture.kwargs.num_classes"
    assert "12" in e.value.message and "10" in e.value.message
    for k in (12, 10):
        spec = make_spec(student={"architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [64], "num_classes": k}}},
                         training={"epochs": 4})
        result, _ = run(spec, teacher, tmp_path / f"k{k}")
        r = result.report
        assert r["student"]["architecture"]["kwargs"]["num_classes"] == k and r["data"]["num_classes"] == 10
        assert any("outputs 12 classes, the data has 10" in n for n in r["teacher"]["notes"]), r["teacher"]["notes"]
        print(f"\nnum_classes {k}: teacher {r['teacher']['val_top1']}, student {r['student']['val_top1']}")
        assert r["teacher"]["val_top1"] > 0.9 and r["student"]["val_top1"] > 0.7


# ---------------------------------------------------------------------------------------------------- tied weights


def _tied_mlp() -> nn.Module:
    torch.manual_seed(0)
    m = build("mlp", {"input_shape": [1, 8, 8], "num_classes": 10, "hidden_sizes": [64, 64]})
    m[3].weight = m[1].weight
    return m.eval()


TIED_ARCH = {"name": "mlp", "kwargs": {"input_shape": [1, 8, 8], "num_classes": 10, "hidden_sizes": [64, 64]}}


def test_tied_weights_load_from_safetensors_and_state_dicts_and_count_once(batch, tmp_path):
    m = _tied_mlp()
    st = tmp_path / "tied.safetensors"
    st_save_model(m, str(st))  # drops 3.weight, records {"3.weight": "1.weight"} in the metadata
    sd = tmp_path / "tied.pt"
    torch.save(m.state_dict(), sd)  # both names, one storage
    ts = tmp_path / "tied.ts"
    torch.jit.script(m).save(str(ts))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (batch[:1],), str(tmp_path / "tied.onnx"), dynamo=False, input_names=["input"],
                          dynamic_axes={"input": {0: "b"}})
    expected = 4874  # 8,970 with the shared [64, 64] weight counted twice
    with torch.no_grad():
        ref = m(batch)
    for path, fmt in ((st, "safetensors"), (sd, "state_dict")):
        t = load_teacher(path, fmt, TIED_ARCH)
        assert t.parameters == expected and torch.allclose(t(batch), ref, atol=1e-6), fmt
        assert any("3.weight tied to 1.weight" in n for n in t.notes), t.notes
    assert inspect_file(sd, "teacher").parameters == expected
    assert inspect_file(st, "teacher").parameters == expected
    assert load_teacher(ts, "torchscript", None).parameters == expected
    assert inspect_file(tmp_path / "tied.onnx", "teacher").parameters == expected
    assert load_teacher(export_path := torch_export_file(tmp_path, m, name="tied.pt2"), "torch_export", None).parameters == expected
    assert inspect_file(export_path, "teacher").parameters == expected


# -------------------------------------------------------------------------------------------------- failures named


def test_teacher_with_non_finite_outputs_is_non_finite_teacher(shipped_cnn, tmp_path):
    class _NaN(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            z = self.inner(x)
            return z / (x.flatten(1).sum(1, keepdim=True) * 0.0)  # inf or nan in every row

    with pytest.raises(DistillError) as e:
        run(make_spec(training={"epochs": 1}), _script_file(_NaN(shipped_cnn), tmp_path / "nan.ts"), tmp_path / "job")
    assert e.value.code == "non_finite_teacher" and "teacher's own outputs" in e.value.message
    assert "try a lower learning rate" not in e.value.message and not (tmp_path / "job/artifacts").exists()


def test_backend_runtime_errors_keep_the_operative_line(shipped_teachers, tmp_path):
    path = tmp_path / "flat.npz"
    np.savez(path, X=np.zeros((40, 2), np.float32), y=np.arange(40) % 10)
    files = {"file_d": FileInput(path, "npz", path.stat().st_size)}
    spec = make_spec(data={"train": {"file_id": "file_d"}}, training={"epochs": 1})
    with pytest.raises(DistillError) as e:
        run(spec, shipped_teachers["torchscript"], tmp_path / "ts", files=files)
    msg = e.value.message
    assert e.value.code == "shape_mismatch" and "the teacher cannot take samples of shape [2]" in msg
    assert "Expected 3D (unbatched) or 4D (batched) input to conv2d" in msg and "in the scripted code" in msg, msg
    assert "The following operation failed" not in msg and "<--- HERE" not in msg
    onnx = load_teacher(shipped_teachers["onnx"].path, "onnx", None)
    with pytest.raises(RuntimeError) as e2:
        onnx(torch.zeros(3, 2))
    assert "Invalid rank for input: input Got: 2 Expected: 4" in str(e2.value)
    with pytest.raises(RuntimeError) as e3:  # onnxruntime's message over several lines: kept, on one line
        onnx(torch.zeros(3, 1, 4, 4))
    assert "index: 2 Got: 4 Expected: 8" in str(e3.value) and "index: 3" in str(e3.value) and "\n" not in str(e3.value)
