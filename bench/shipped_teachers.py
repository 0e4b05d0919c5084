"""One CNN that is not a registry architecture, exported the three ways teams ship models (torch.export .pt2, ONNX,
TorchScript), distilled with kd, fitnet and prototype from each format on mnist5k (through the distillation core, as
the worker runs it; same split, seed and budget). Prints a Markdown table (format x method -> student top-1, job wall)
and the spread of top-1 per method across formats — the one in the README (issue 10's Done means).

    .venv/bin/python bench/shipped_teachers.py [--epochs 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from distill.data import load_builtin, split_validation  # noqa: E402
from distill.formats import FileInput  # noqa: E402
from distill.job import run_job  # noqa: E402
from distill.reporter import RecordingReporter  # noqa: E402
from distill.results import JobInputs  # noqa: E402
from distill.spec import JobSpec  # noqa: E402

METHODS = {
    "kd (Hinton 2015)": {"name": "kd", "temperature": 4.0, "alpha": 0.9},
    "fitnet (Romero 2015)": {"name": "fitnet", "alpha": 0.5, "student_layer": "2", "teacher_layer": "classifier.2"},
    "prototype": {"name": "prototype", "alpha": 0.5},
}
FORMATS = ("torch_export", "onnx", "torchscript")


class TeamCNN(nn.Module):
    """A team's own mnist CNN: ``features`` (conv 16, ReLU, pool, conv 32, ReLU, pool) and ``classifier`` (flatten,
    Linear 1568→64, ReLU, Linear 64→10) for [1, 28, 28] inputs; logits ``[B, 10]``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 10]`` for ``x [B, 1, 28, 28]``."""
        return self.classifier(self.features(x))


def train_team_cnn(epochs: int = 3) -> nn.Module:
    """``TeamCNN`` trained with cross-entropy (AdamW 3e-3, batch 64, seed 0) on mnist5k's training split."""
    x, y, _ = load_builtin("mnist5k")
    tr, _ = split_validation(y, 0.2, 0)
    xt, yt = torch.from_numpy(x[tr]), torch.from_numpy(y[tr])
    torch.manual_seed(0)
    model = TeamCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(xt.shape[0], generator=gen)
        for i in range(0, xt.shape[0] - 63, 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def export_three_ways(model: nn.Module, out: Path) -> dict[str, Path]:
    """``model`` as ``out/team.pt2`` (torch.export, dynamic batch), ``out/team.onnx`` (dynamic batch) and ``out/team.ts``."""
    out.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(2, 1, 28, 28)
    ep = torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
    torch.export.save(ep, str(out / "team.pt2"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x[:1],), str(out / "team.onnx"), dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    torch.jit.script(model).save(str(out / "team.ts"))
    return {"torch_export": out / "team.pt2", "onnx": out / "team.onnx", "torchscript": out / "team.ts"}


def main() -> None:
    """Train, export, run the 9 jobs, print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    paths = export_three_ways(train_team_cnn(), ROOT / "bench" / "out" / "shipped")
    rows, top1 = [], {}
    for fmt in FORMATS:
        fi = FileInput(paths[fmt], fmt, paths[fmt].stat().st_size)
        for label, method in METHODS.items():
            spec = JobSpec.model_validate({
                "teacher": {"file_id": "file_teacher"}, "student": {"architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [64]}}},
                "data": {"train": {"builtin": "mnist5k"}, "validation": {"fraction": 0.2, "seed": 0}}, "method": method,
                "training": {"epochs": args.epochs, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 3e-3}, "seed": 0},
                "evaluation": {"latency_iterations": 20, "latency_batch_sizes": [1]}, "export": {"formats": ["safetensors"]}})
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as wd:
                r = run_job(spec, JobInputs(teacher=fi, files={}), Path(wd), RecordingReporter()).report
            wall = time.perf_counter() - t0
            top1.setdefault(label, {})[fmt] = r["student"]["val_top1"]
            rows.append(f"| {fmt} | {label} | {100 * r['teacher']['val_top1']:.2f}% | {100 * r['student']['val_top1']:.2f}% | "
                        f"{r['wall_time_s']['total']:.1f} s ({wall:.1f} s) | {r['teacher']['latency_ms']['1']['p50']} ms |")
            print(rows[-1], flush=True)
    print(f"\nmnist5k (4,000 train / 1,000 validation), mlp [64] student, {args.epochs} epochs, AdamW 3e-3, batch 64, seed 0, "
          "1 CPU thread, teacher outputs (and features) cached.\n")
    print("| teacher format | method | teacher top-1 | student top-1 | job wall (report total; with set-up) | teacher p50 @1 |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n| method | top-1 spread across formats (points) |\n|---|---|")
    for label, by_fmt in top1.items():
        print(f"| {label} | {100 * (max(by_fmt.values()) - min(by_fmt.values())):.2f} |")


if __name__ == "__main__":
    main()
