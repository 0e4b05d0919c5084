"""Teacher wrappers: every format gives the same logits; weights/architecture mismatches are explained."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import save_file

from distill.errors import DistillError
from distill.spec import ArchitectureSpec
from distill.teachers import load_teacher

from tests.models import TEACHER_ARCH


@pytest.fixture(scope="module")
def batch(digits):
    return torch.from_numpy(digits["x"][digits["val_idx"][:32]])


@pytest.fixture(scope="module")
def reference(teacher_model, batch):
    with torch.no_grad():
        return teacher_model(batch)


def test_safetensors_with_metadata_needs_no_architecture(teacher_file, batch, reference):
    t = load_teacher(teacher_file.path, "safetensors", None, "cpu")
    out = t(batch)
    assert out.shape == (32, 10) and out.dtype == torch.float32
    torch.testing.assert_close(out, reference)
    assert t.num_classes == 10 and t.input_shape == [1, 8, 8] and t.format == "safetensors"
    assert t.parameters == sum(p.numel() for p in t.module.parameters())
    assert not t.module.training and not any(p.requires_grad for p in t.module.parameters())
    assert t.flops_per_sample and t.flops_per_sample > 0
    lat = t.latency(4, 5)
    assert set(lat) == {"p50_ms", "p95_ms"} and 0 < lat["p50_ms"] <= lat["p95_ms"]


def test_state_dict_from_dataparallel_is_accepted(teacher_model, tmp_path, batch, reference):
    path = tmp_path / "dp.pt"
    torch.save({"model": {f"module.{k}": v for k, v in teacher_model.state_dict().items()}}, path)
    arch = ArchitectureSpec(name="cnn", kwargs={**TEACHER_ARCH["kwargs"], "input_shape": [1, 8, 8], "num_classes": 10})
    t = load_teacher(path, "state_dict", arch, "cpu")
    torch.testing.assert_close(t(batch), reference)
    assert any("module." in n for n in t.notes)


def test_weights_only_teacher_without_architecture(teacher_model, tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in teacher_model.state_dict().items()}, str(path))
    with pytest.raises(DistillError) as e:
        load_teacher(path, "safetensors", None, "cpu")
    assert e.value.code == "invalid_spec" and "teacher.architecture" in e.value.message


def test_mismatched_keys_are_listed(teacher_file):
    wrong = ArchitectureSpec(name="mlp", kwargs={"input_shape": [1, 8, 8], "num_classes": 10})
    with pytest.raises(DistillError) as e:
        load_teacher(teacher_file.path, "safetensors", wrong, "cpu")
    assert e.value.code == "shape_mismatch" and e.value.param == "teacher.architecture"
    assert "missing keys" in e.value.message and "1.weight" in e.value.message
    assert "unexpected keys" in e.value.message and "0.weight" in e.value.message


def test_wrong_shapes_are_explained(teacher_file):
    wrong = ArchitectureSpec(name="cnn", kwargs={**TEACHER_ARCH["kwargs"], "hidden": 32, "input_shape": [1, 8, 8], "num_classes": 10})
    with pytest.raises(DistillError) as e:
        load_teacher(teacher_file.path, "safetensors", wrong, "cpu")
    assert e.value.code == "shape_mismatch" and "wrong shapes" in e.value.message


def test_torchscript_teacher(teacher_model, tmp_path, batch, reference):
    path = tmp_path / "t.pt"
    torch.jit.trace(teacher_model, batch[:1]).save(str(path))
    t = load_teacher(path, "auto", None, "cpu")
    assert t.format == "torchscript" and t.num_classes is None and t.input_shape is None
    torch.testing.assert_close(t(batch), reference)
    assert t.num_classes == 10  # learnt from the first call
    t.input_shape = [1, 8, 8]
    assert t.flops_per_sample and t.flops_per_sample > 0


def test_onnx_teacher(teacher_model, tmp_path, batch, reference):
    path = tmp_path / "t.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(teacher_model, (batch[:1],), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    t = load_teacher(path, "onnx", None, "cpu")
    assert t.num_classes == 10 and t.input_shape == [1, 8, 8] and t.flops_per_sample is None
    torch.testing.assert_close(t(batch), reference, atol=1e-4, rtol=1e-4)
    assert t.parameters > 0
    assert t.latency(8, 5)["p50_ms"] > 0


def test_conv_teacher_runs_channels_last_with_the_same_logits(teacher_file, batch, reference):
    t = load_teacher(teacher_file.path, "safetensors", None, "cpu")
    note = t.use_channels_last(batch)
    assert note is not None and "channels-last" in note
    assert t.memory_format is torch.channels_last
    conv = [m for m in t.module.modules() if isinstance(m, torch.nn.Conv2d)][-1]  # 16 -> 32 channels (the first has 1 input)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    torch.testing.assert_close(t(batch), reference, atol=1e-4, rtol=1e-4)
    # rows do not depend on the batch they are computed in (the teacher cache relies on it)
    assert torch.equal(torch.cat([t(batch[:8]), t(batch[8:])]), t(batch))


class _ViewsActivations(torch.nn.Module):
    """A conv net whose forward calls ``view`` on a conv output: impossible on a channels-last tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.fc(h.view(h.shape[0], -1))


@pytest.mark.parametrize("script", [False, True])
def test_teacher_that_breaks_in_channels_last_stays_contiguous(batch, script):
    from distill.teachers import TorchTeacher

    torch.manual_seed(0)
    module = _ViewsActivations()
    t = TorchTeacher(torch.jit.script(module) if script else module, "torchscript", torch.device("cpu"), num_classes=10,
                     input_shape=[1, 8, 8])
    before = t(batch).clone()
    assert t.use_channels_last(batch) is None
    assert t.memory_format is torch.contiguous_format and t.module.conv.weight.is_contiguous()
    assert torch.equal(t(batch), before)


def test_channels_last_is_not_tried_on_flat_inputs(teacher_model):
    from distill.teachers import TorchTeacher

    mlp = torch.nn.Sequential(torch.nn.Linear(64, 10))
    t = TorchTeacher(mlp, "safetensors", torch.device("cpu"), num_classes=10, input_shape=[64])
    assert t.use_channels_last(torch.zeros(4, 64)) is None and t.memory_format is torch.contiguous_format
