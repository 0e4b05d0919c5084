"""Architecture registry: build, describe, validation of kwargs."""

from __future__ import annotations

import pytest
import torch

from distill.errors import DistillError
from distill.models import available, build, describe, register
from distill.models import parameter_count


def test_available_lists_builtin_architectures():
    assert {"mlp", "cnn", "resnet"} <= set(available())


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize(
    "name,kwargs,shape",
    [
        ("mlp", {"input_shape": [64], "num_classes": 10}, [64]),
        ("mlp", {"input_shape": [1, 8, 8], "num_classes": 3, "hidden_sizes": [16, 8], "activation": "gelu", "dropout": 0.1}, [1, 8, 8]),
        ("mlp", {"input_shape": [5], "num_classes": 2, "hidden_sizes": []}, [5]),
        ("cnn", {"input_shape": [1, 8, 8], "num_classes": 10}, [1, 8, 8]),
        ("cnn", {"input_shape": [3, 3, 3], "num_classes": 4, "channels": [4, 4, 4], "hidden": 0, "kernel_size": 2}, [3, 3, 3]),
        ("resnet", {"input_shape": [1, 8, 8], "num_classes": 10}, [1, 8, 8]),
        ("resnet", {"input_shape": [3, 16, 16], "num_classes": 5, "channels": [8, 16], "blocks_per_stage": 2}, [3, 16, 16]),
    ],
)
def test_build_gives_logits_of_the_right_shape(name, kwargs, shape):
    model = build(name, kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(4, *shape))
    assert out.shape == (4, kwargs["num_classes"])
    assert out.dtype == torch.float32


def test_mlp_parameter_count_is_exact():
    m = build("mlp", {"input_shape": [1, 8, 8], "num_classes": 10, "hidden_sizes": [32]})
    assert parameter_count(m) == 64 * 32 + 32 + 32 * 10 + 10


def test_cnn_skips_pooling_below_one_pixel():
    # 2x2 input: first pool 2x2->1x1, the second would go below 1 and is skipped
    m = build("cnn", {"input_shape": [1, 2, 2], "num_classes": 3, "channels": [4, 4], "hidden": 0})
    assert sum(isinstance(layer, torch.nn.MaxPool2d) for layer in m) == 1
    assert m(torch.randn(2, 1, 2, 2)).shape == (2, 3)


def test_resnet_uses_projection_shortcuts_when_shape_changes():
    m = build("resnet", {"input_shape": [1, 8, 8], "num_classes": 10, "channels": [4, 8]})
    blocks = list(m.stages)
    assert isinstance(blocks[0].shortcut, torch.nn.Identity)
    assert isinstance(blocks[1].shortcut, torch.nn.Sequential) and blocks[1].conv1.stride == (2, 2)


def test_describe_fills_defaults():
    d = describe("cnn", {"input_shape": [1, 8, 8], "num_classes": 10})
    assert d == {"name": "cnn", "kwargs": {"input_shape": [1, 8, 8], "num_classes": 10, "channels": [32, 64], "kernel_size": 3, "hidden": 128}}


@pytest.mark.parametrize(
    "name,kwargs,needle",
    [
        ("transformer", {"input_shape": [4], "num_classes": 2}, "unknown architecture"),
        ("mlp", {"input_shape": [4], "num_classes": 2, "hiden_sizes": [3]}, "hiden_sizes"),
        ("mlp", {"input_shape": [4], "num_classes": 2, "activation": "swish"}, "activation"),
        ("mlp", {"input_shape": [4], "num_classes": 2, "dropout": 1.0}, "dropout"),
        ("mlp", {"input_shape": [4], "num_classes": 0}, "num_classes"),
        ("mlp", {"num_classes": 2}, "input_shape"),
        ("cnn", {"input_shape": [64], "num_classes": 10}, "[C, H, W]"),
        ("cnn", {"input_shape": [1, 8, 8], "num_classes": 10, "channels": []}, "channels"),
        ("resnet", {"input_shape": [1, 8], "num_classes": 10}, "input_shape"),
        ("resnet", {"input_shape": [1, 8, 8], "num_classes": 10, "blocks_per_stage": 0}, "blocks_per_stage"),
    ],
)
def test_bad_spec_is_invalid_spec_naming_the_argument(name, kwargs, needle):
    with pytest.raises(DistillError) as e:
        build(name, kwargs)
    assert e.value.code == "invalid_spec"
    assert needle in e.value.message


def test_register_refuses_duplicates_and_adds_new_names():
    with pytest.raises(ValueError):
        register("mlp")(lambda input_shape, num_classes: torch.nn.Linear(1, 1))

    @register("test_linear_only")
    def linear(input_shape, num_classes):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(input_shape[0], num_classes))

    assert "test_linear_only" in available()
    assert build("test_linear_only", {"input_shape": [3], "num_classes": 2})(torch.zeros(1, 3)).shape == (1, 2)


def test_build_is_seeded_by_the_global_rng():
    torch.manual_seed(3)
    a = build("mlp", {"input_shape": [4], "num_classes": 2})
    torch.manual_seed(3)
    b = build("mlp", {"input_shape": [4], "num_classes": 2})
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_readme_lists_the_registry_students_layer_names():
    """The README's table of registry students' layers (for fitnet/attention_transfer ``student_layer``) is what
    ``distill.features.layer_names`` gives for the defaults it names."""
    from pathlib import Path

    from distill.features import layer_names

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "**A registry student's layers**" in readme

    def names(name: str, **kwargs) -> list[str]:
        return layer_names(build(name, kwargs))

    mlp = build("mlp", {"input_shape": [64], "num_classes": 10})
    assert names("mlp", input_shape=[64], num_classes=10) == ["0", "1", "2", "3", "penultimate"]
    assert [type(m).__name__ for m in mlp] == ["Flatten", "Linear", "ReLU", "Linear"]
    two = build("mlp", {"input_shape": [64], "num_classes": 10, "hidden_sizes": [64, 32]})
    assert [type(m).__name__ for m in two] == ["Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    cnn = build("cnn", {"input_shape": [1, 8, 8], "num_classes": 10})
    assert [type(m).__name__ for m in cnn] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"] * 2 + ["Flatten", "Linear", "ReLU", "Linear"]
    assert names("cnn", input_shape=[1, 8, 8], num_classes=10) == [str(i) for i in range(12)] + ["penultimate"]
    res = names("resnet", input_shape=[3, 32, 32], num_classes=10)
    assert [n for n in res if "." not in n] == ["stem", "stages", "pool", "fc", "penultimate"]
    assert {"stem.0", "stem.2", "stages.0.conv1", "stages.0.shortcut", "stages.2.relu", "stages.1.shortcut.0", "stages.1.shortcut.1"} <= set(res)
    assert "stages.3" not in res
