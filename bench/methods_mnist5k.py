"""The method catalogue on mnist5k: one job per method (through the distillation core, as the worker runs it),
each with ``evaluation.compare_baseline`` so the same student is also trained alone on the same split, budget
and seed. Prints a Markdown table (method, teacher, student, top-1 alone vs distilled, gain, size, latency) —
the one in the README.

    .venv/bin/python bench/methods_mnist5k.py [--epochs 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.service_vs_bare import make_teacher  # noqa: E402
from distill.formats import FileInput  # noqa: E402
from distill.job import run_job  # noqa: E402
from distill.reporter import RecordingReporter  # noqa: E402
from distill.results import JobInputs  # noqa: E402
from distill.spec import JobSpec  # noqa: E402

MLP = {"name": "mlp", "kwargs": {"hidden_sizes": [64]}}
SMALL_CNN = {"name": "cnn", "kwargs": {"channels": [8], "hidden": 0}}
# teacher cnn [32, 64] / 128: 0 conv 1 BN 2 ReLU (32x28x28) 3 pool 4 conv 5 BN 6 ReLU (64x14x14) 7 pool 8 flatten 9 Linear 10 ReLU 11 Linear
# mlp [64]: 0 flatten 1 Linear 2 ReLU 3 Linear; cnn [8] / 0: 0 conv 1 BN 2 ReLU (8x28x28) 3 pool 4 flatten 5 Linear
CASES = [
    ("kd (Hinton 2015)", {"name": "kd", "temperature": 4.0, "alpha": 0.9}, MLP),
    ("hard_label", {"name": "hard_label", "alpha": 0.9}, MLP),
    ("dkd (Zhao 2022)", {"name": "dkd", "temperature": 4.0}, MLP),
    ("kd + logit standardisation (Sun 2024)", {"name": "kd", "temperature": 2.0, "alpha": 0.9, "logit_standardization": True}, MLP),
    ("fitnet (Romero 2015)", {"name": "fitnet", "alpha": 0.5, "student_layer": "2", "teacher_layer": "10"}, MLP),
    ("kd + fitnet", {"name": "kd", "temperature": 4.0, "alpha": 0.9,
                     "extra": [{"name": "fitnet", "weight": 1.0, "student_layer": "2", "teacher_layer": "10"}]}, MLP),
    ("attention_transfer (Zagoruyko 2017)", {"name": "attention_transfer", "alpha": 0.5, "student_layer": "2", "teacher_layer": "2"},
     SMALL_CNN),
    ("rkd (Park 2019)", {"name": "rkd", "alpha": 0.5}, MLP),
    ("prototype", {"name": "prototype", "alpha": 0.5}, MLP),
]


def main() -> None:
    """Run every case and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    teacher = ROOT / "bench" / "out" / "mnist5k_teacher.safetensors"
    if not teacher.exists():
        make_teacher(teacher)
    fi = FileInput(teacher, "safetensors", teacher.stat().st_size)
    rows = []
    for label, method, student in CASES:
        spec = JobSpec.model_validate({
            "teacher": {"file_id": "file_teacher"}, "student": {"architecture": student},
            "data": {"train": {"builtin": "mnist5k"}, "validation": {"fraction": 0.2, "seed": 0}}, "method": method,
            "training": {"epochs": args.epochs, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 3e-3}, "seed": 0},
            "evaluation": {"latency_iterations": 50, "latency_batch_sizes": [1], "compare_baseline": True},
            "export": {"formats": ["safetensors"]}})
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as wd:
            r = run_job(spec, JobInputs(teacher=fi, files={"file_teacher": fi}), Path(wd), RecordingReporter()).report
        wall = time.perf_counter() - t0
        s, t, b = r["student"], r["teacher"], r["baseline"]
        rows.append(f"| {label} | cnn [32, 64] ({t['parameters']:,} params, {100 * t['val_top1']:.2f}%) | {s['architecture']['name']} "
                    f"{s['architecture']['kwargs'].get('hidden_sizes') or s['architecture']['kwargs'].get('channels')} "
                    f"({s['parameters']:,} params, {s['bytes'] / 1024:.1f} KiB) | {100 * b['val_top1']:.2f}% | {100 * s['val_top1']:.2f}% | "
                    f"{r['distillation_gain_points']:+.2f} | {r['compression_ratio']}× | {s['latency_ms']['1']['p50']} ms "
                    f"(teacher {t['latency_ms']['1']['p50']}) | {wall:.0f} s |")
        print(rows[-1], flush=True)
    print(f"\nmnist5k (4,000 train / 1,000 validation), {args.epochs} epochs, AdamW 3e-3 cosine, batch 64, seed 0, 1 CPU thread, "
          f"teacher outputs cached; 'alone' = the same student trained with cross-entropy only on the same split and budget.\n")
    print("| method | teacher | student | top-1 alone | top-1 distilled | gain (points) | compression | p50 latency @1 | job wall |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
