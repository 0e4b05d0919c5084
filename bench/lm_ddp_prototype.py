"""Prototype for ``training.devices: N`` (issue 13): the same causal-LM distillation run in one process and data-parallel
over 2 processes on the CPU (gloo), by plain PyTorch DDP under ``torchrun`` and through Hugging Face ``accelerate``
under ``torchrun``, with the same global batch; prints the per-step losses side by side, their largest difference
and the wall times.

    .venv/bin/python bench/lm_ddp_prototype.py [--steps 20] [--global-batch 8] [--nproc 2]

Outside the service on purpose: it settles how the one trainer should do it. What it shows:

- Token-weighted losses need a global token count (the 'naive DDP' column shows the drift without it). The loss of a step is the mean over its target tokens; a rank's
  mean over its own tokens, averaged by DDP, is not the global mean when ranks hold different token counts. Each rank
  all-reduces its target count and scales its summed loss by ``world_size / global_count``; DDP's gradient average
  then equals the single-process gradient of the global batch (to float rounding).
- Each rank takes a fixed slice of every global batch (rank r: rows r, r + N, ...), so the data order is the
  single-process order whatever N is; the teacher is replicated (inference only, no DDP wrapper).
- Not exercised here, but what the trainer must do under N processes: anything that ends a step early on one rank
  (should_stop, the runtime deadline, a non-finite loss) must be agreed by all ranks (an all-reduce of a flag), or
  the others hang in the next collective; rank 0 alone writes checkpoints (the unwrapped student's state dict) and
  metrics, and every rank loads a checkpoint to resume.

The random tiny teacher and data are made here (seeded), so anyone can rerun it without a download.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from distill.lm.losses import targets, token_kd_loss  # noqa: E402
from distill.lm.models import derive_student  # noqa: E402

VOCAB, ROWS, MAX_LEN = 512, 64, 48


def make_teacher():
    """A seeded random 4-layer Llama (hidden 64) as the teacher."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval().requires_grad_(False)


def make_data():
    """``ROWS`` rows of random length (8..MAX_LEN) with a random prompt part masked out: ids, attention, targets."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (ROWS, MAX_LEN), generator=g)
    lengths = torch.randint(8, MAX_LEN + 1, (ROWS,), generator=g)
    prompts = (lengths.float() * torch.rand(ROWS, generator=g) * 0.7).long()
    pos = torch.arange(MAX_LEN).unsqueeze(0)
    att = (pos < lengths.unsqueeze(1)).long()
    tgt = att * (pos >= prompts.unsqueeze(1)).long()
    return ids * att, att, tgt


def step_loss(student, teacher, ids, att, tgt, world: int, all_reduce, weighted: bool = True) -> tuple[torch.Tensor, float]:
    """The rank's share of the global token-mean forward-KL loss (``sum · world / global tokens``) and the global loss
    value (for logging). ``weighted=False``: the rank's own token mean (what a naive port does; DDP then averages
    means of unequal token counts)."""
    s_sel, _ = targets(student(input_ids=ids, attention_mask=att, use_cache=False).logits, ids, tgt)
    with torch.inference_mode():
        t_logits = teacher(input_ids=ids, attention_mask=att, use_cache=False).logits
    t_sel, _ = targets(t_logits, ids, tgt)
    local_sum = token_kd_loss(s_sel, t_sel.clone()) * s_sel.shape[0]
    stats = torch.tensor([float(s_sel.shape[0]), float(local_sum.detach())])
    all_reduce(stats)
    if not weighted:
        return local_sum / max(s_sel.shape[0], 1), float(stats[1] / stats[0])
    return local_sum * world / stats[0], float(stats[1] / stats[0])


def run(mode: str, steps: int, global_batch: int, out: Path) -> None:
    """One run: 'single' (this process), 'ddp' or 'accelerate' (inside torchrun). Writes ``{losses, wall_s}`` to
    ``out`` (rank 0)."""
    torch.set_num_threads(1)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    teacher = make_teacher()
    student, _ = derive_student(teacher, num_layers=2, seed=0)
    student.config.attention_dropout = 0.0
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)
    ids, att, tgt = make_data()
    reduce = lambda t: None  # noqa: E731 - single process: nothing to reduce
    if mode in ("ddp", "ddp-naive"):
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        dist.init_process_group("gloo")
        model = DistributedDataParallel(student)
        reduce = dist.all_reduce
    elif mode == "accelerate":
        import torch.distributed as dist
        from accelerate import Accelerator

        acc = Accelerator(cpu=True)
        model, opt = acc.prepare(student, opt)
        reduce = dist.all_reduce
    else:
        model = student
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        lo = (step * global_batch) % ROWS
        rows = torch.arange(lo, lo + global_batch) % ROWS
        mine = rows[rank::world]
        loss, value = step_loss(model, teacher, ids[mine], att[mine], tgt[mine], world, reduce, weighted=mode != "ddp-naive")
        opt.zero_grad(set_to_none=True)
        if mode == "accelerate":
            acc.backward(loss)
        else:
            loss.backward()
        opt.step()
        losses.append(value)
    wall = time.perf_counter() - t0
    if rank == 0:
        out.write_text(json.dumps({"losses": losses, "wall_s": wall}))
    if mode != "single":
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--mode", choices=["single", "ddp", "ddp-naive", "accelerate"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.mode:
        run(a.mode, a.steps, a.global_batch, a.out)
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("single", "ddp", "accelerate", "ddp-naive"):
            out = Path(tmp) / f"{mode}.json"
            cmd = [sys.executable, __file__, "--mode", mode, "--steps", str(a.steps), "--global-batch", str(a.global_batch),
                   "--out", str(out)]
            if mode != "single":
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.nproc}", *cmd[1:]]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
            results[mode] = {**json.loads(out.read_text()), "process_wall_s": time.perf_counter() - t0}
    base = results["single"]["losses"]
    print(f"{'step':>4} {'1 process':>12} {'DDP x' + str(a.nproc):>12} {'accelerate x' + str(a.nproc):>14} {'naive DDP':>12}")
    for i, v in enumerate(base):
        print(f"{i:>4} {v:>12.6f} {results['ddp']['losses'][i]:>12.6f} {results['accelerate']['losses'][i]:>14.6f} "
              f"{results['ddp-naive']['losses'][i]:>12.6f}")
    for mode in ("ddp", "accelerate", "ddp-naive"):
        diff = max(abs(x - y) for x, y in zip(base, results[mode]["losses"]))
        print(f"{mode}: largest |loss - single| over {a.steps} steps = {diff:.2e}; training loop {results[mode]['wall_s']:.1f} s, "
              f"whole run with start-up {results[mode]['process_wall_s']:.1f} s")
    print(f"single: training loop {results['single']['wall_s']:.1f} s, whole run {results['single']['process_wall_s']:.1f} s")


if __name__ == "__main__":
    main()
