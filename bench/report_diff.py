"""Check that a change to the core leaves the report users read unchanged: run one small digits job with every report
block (compare_baseline, dynamic int8, pruning with a fine-tune, ONNX) in a checkout and save its stored report, then
diff two saved reports: keys only in one, and values that differ, with the timing-dependent ones (latencies, speedups,
wall and training seconds, and the summary, which quotes a speedup) counted apart.

    cp bench/report_diff.py /tmp/
    cd OLD_CHECKOUT && PYTHONPATH=$PWD .venv/bin/python /tmp/report_diff.py run /tmp/before.json
    cd NEW_CHECKOUT && PYTHONPATH=$PWD .venv/bin/python /tmp/report_diff.py run /tmp/after.json
    .venv/bin/python bench/report_diff.py diff /tmp/before.json /tmp/after.json [--as-served]

Run the same copy of this script for both: the int8 TorchScript student records the running script's path, so
``quantized.bytes`` differs by a few dozen bytes between two script paths.

``--as-served`` validates both through ``distill.report`` first (what ``GET /v1/jobs/{id}/report`` returns), so
the keys a typed dump adds as null to an older stored report are not counted. The job is seeded and runs on one
thread (about 15 s on a CPU core).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from distill.data import load_builtin, split_validation
from distill.formats import FileInput
from distill.job import run_job
from distill.report import parse_report
from distill.reporter import RecordingReporter
from distill.results import JobInputs
from distill.spec import JobSpec
from distill.teacher_training import save_model, train_classifier

TIMING = ("wall_time_s", "training_time_s", "cache_seconds", "latency_ms", "speedup", "throughput_per_s", "summary")


def walk(a: Any, b: Any, path: str = "") -> Iterator[tuple[str, str, Any, Any]]:
    """(kind 'added' | 'removed' | 'changed', dotted path, old, new) for every difference of two JSON values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            p = f"{path}.{k}" if path else k
            if k not in a:
                yield "added", p, None, b[k]
            elif k not in b:
                yield "removed", p, a[k], None
            else:
                yield from walk(a[k], b[k], p)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from walk(x, y, f"{path}[{i}]")
    elif a != b:
        yield "changed", path, a, b


def run(out: Path) -> None:
    """Train a small digits CNN teacher (4 epochs, seed 0), run the job and write its ``DistillResult.report`` to ``out``."""
    torch.set_num_threads(1)
    x, y, _ = load_builtin("digits")
    tr, _ = split_validation(y, 0.2, 0)
    teacher = train_classifier({"name": "cnn", "kwargs": {"channels": [16, 32], "hidden": 64}}, x[tr], y[tr], epochs=4, seed=0, lr=3e-3)
    tmp = Path(tempfile.mkdtemp())
    size = save_model(teacher, teacher.stillhouse_architecture, tmp / "t.safetensors")
    spec = JobSpec.model_validate({
        "teacher": {"file_id": "file_teacher"}, "student": {"architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [64]}}},
        "data": {"train": {"builtin": "digits"}}, "method": {"name": "kd", "temperature": 4.0, "alpha": 0.9},
        "training": {"epochs": 3, "batch_size": 64, "optimizer": {"name": "adamw", "lr": 5e-3}, "seed": 0},
        "evaluation": {"latency_iterations": 5, "latency_batch_sizes": [1, 16], "compare_baseline": True},
        "export": {"formats": ["safetensors", "onnx"], "quantize": "dynamic_int8", "prune": {"amount": 0.5, "fine_tune_epochs": 1}}})
    res = run_job(spec, JobInputs(teacher=FileInput(tmp / "t.safetensors", "safetensors", size), files={}), tmp / "work",
                  RecordingReporter())
    out.write_text(json.dumps(res.report, indent=1))
    print(f"wrote {out}: {len(res.report)} top-level keys, student val top-1 {res.report['student']['val_top1']}")


def diff(before: Path, after: Path, as_served: bool) -> None:
    """Print the differences of two saved reports (see the module docstring)."""
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    if as_served:
        a, b = parse_report(a).model_dump(mode="json"), parse_report(b).model_dump(mode="json")
    timing = 0
    for kind, path, old, new in walk(a, b):
        if kind == "changed" and any(t in path for t in TIMING):
            timing += 1
        else:
            print(f"{kind:8} {path}: {old!r} -> {new!r}")
    print(f"{timing} timing-dependent values differ")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("run").add_argument("out", type=Path)
    d = sub.add_parser("diff")
    d.add_argument("before", type=Path)
    d.add_argument("after", type=Path)
    d.add_argument("--as-served", action="store_true")
    args = ap.parse_args()
    run(args.out) if args.cmd == "run" else diff(args.before, args.after, args.as_served)
