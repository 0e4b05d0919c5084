"""Benchmark: the one trainer's training step against a bare PyTorch step, interleaved step by step in one process.

The job of ``bench/service_vs_bare.py`` (mnist5k, its CNN teacher in the layout a job gives it, mlp [128], Hinton
KD T=4 alpha=0.9, AdamW with a per-step cosine, batch 64, seed 0, 1 torch thread, teacher run at every step) is
trained twice at once: step i of ``distill.training.Trainer`` (the ``TensorClassification`` adapter, a
``RecordingReporter``: no SQL) is followed by step i of a bare loop on the same batch, so both see the same load on a
busy machine. Prints the median per-step times, the median of per-step ratios, and whether the two students end
bit-identical (they should: equal work).

    .venv/bin/python bench/trainer_step_vs_bare.py [--epochs 3]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the checkout's packages, not an installed copy
    sys.path.insert(0, str(ROOT))

from bench.service_vs_bare import BATCH, LR, OUT, SEED, STUDENT_ARCH, bare_step, job_spec, make_teacher  # noqa: E402
from distill.data import load_data  # noqa: E402
from distill.methods import build_method  # noqa: E402
from distill.models import build  # noqa: E402
from distill.reporter import RecordingReporter  # noqa: E402
from distill.spec import JobSpec  # noqa: E402
from distill.teachers import load_teacher  # noqa: E402
from distill.training import TensorClassification, Trainer  # noqa: E402


def main() -> None:
    """Run both loops interleaved for ``--epochs`` and print the per-step figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = OUT / "mnist5k_teacher.safetensors"
    if not path.exists():
        make_teacher(path)
    cpu = torch.device("cpu")
    spec = JobSpec.model_validate(job_spec("file_bench", args.epochs))
    teacher = load_teacher(path, "safetensors", None, cpu)
    data = load_data(spec.data, {}, input_shape=teacher.input_shape)
    layout = torch.channels_last if teacher.use_channels_last(data.train_x[:BATCH]) else torch.contiguous_format
    kwargs = {**STUDENT_ARCH["kwargs"], "input_shape": [1, 28, 28], "num_classes": 10}
    torch.manual_seed(SEED)
    ours = build(STUDENT_ARCH["name"], kwargs)
    torch.manual_seed(SEED)
    bare = build(STUDENT_ARCH["name"], kwargs)
    method = build_method(spec.method, has_labels=True, all_labelled=True)
    trainer = Trainer(TensorClassification(ours, teacher, method, data, cpu), spec.training, device=cpu,
                      workdir=Path(tempfile.mkdtemp()), reporter=RecordingReporter(), deadline=math.inf, fingerprint="bench")
    trainer.run_start, trainer.start_step, trainer.progress_every = time.perf_counter(), 0, max(1, trainer.spe // 20)
    opt = torch.optim.AdamW(bare.parameters(), lr=LR, weight_decay=0.0)
    total = args.epochs * trainer.spe
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    ours_s, bare_s = [], []
    for epoch in range(1, args.epochs + 1):
        ep = trainer._begin_epoch(epoch, None)
        for i in range(trainer.spe):
            t0 = time.perf_counter()
            trainer._before_step(ep, i)
            trainer._train_step(ep, i)
            t1 = time.perf_counter()
            idx = ep.plan[i]
            bare_step(bare, teacher.module, opt, sched, data.train_x[idx], data.train_y[idx], layout)
            ours_s.append(t1 - t0)
            bare_s.append(time.perf_counter() - t1)
        trainer._end_epoch(ep)
    trainer.store.wait()
    same = all(torch.equal(p, q) for p, q in zip(ours.parameters(), bare.parameters()))
    print(f"{len(ours_s)} steps ({args.epochs} epochs), teacher {layout}: trainer step median {1e3 * statistics.median(ours_s):.3f} ms, "
          f"bare step median {1e3 * statistics.median(bare_s):.3f} ms; median of per-step ratios "
          f"{statistics.median(a / b for a, b in zip(ours_s, bare_s)):.3f}; students bit-identical: {same}")


if __name__ == "__main__":
    main()
