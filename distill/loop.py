"""The distillation training loop: seeded, resumable from per-epoch checkpoints, cancellable between steps.

Per step: teacher logits (and the features a method reads) for the batch — from the per-job cache
(``TeacherCache``, computed once before training) or under ``torch.inference_mode()`` — student forward
(under ``torch.autocast`` for bf16/fp16), the method's loss terms (float32) summed, backward, optimizer and
per-step LR-schedule step. Loss terms are accumulated on the device and
read back only every ``log_every_steps`` steps and at epoch ends (the only host syncs besides one per epoch),
so the loop costs little more than a bare PyTorch loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from .data import DataBundle
from .errors import DistillError, StopRequested
from .features import FeatureRecorder
from .methods import CombinedMethod, Method
from .reporter import MetricRow, Reporter
from .spec import JobSpec, OptimizerSpec, TrainingSpec
from .teachers import Teacher

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 1  # written at epoch ends
PARTIAL_CHECKPOINT_VERSION = 2  # written within an epoch when a job is handed back (``partial`` holds the epoch's state)
EVAL_BATCH = 1024  # rows per no-grad inference batch (teacher cache, validation) on an accelerator
CPU_EVAL_BATCH = 128  # ... and on the CPU, where big conv batches fall out of cache: one thread ran the mnist5k CNN
# teacher over 4,000 rows about 2x slower in 1,024-row batches than in 64-128-row ones (bench/vs_torchdistill.py)


def inference_batch(device: torch.device) -> int:
    """Rows per no-grad inference batch on ``device``: ``CPU_EVAL_BATCH`` on the CPU, else ``EVAL_BATCH``."""
    return CPU_EVAL_BATCH if device.type == "cpu" else EVAL_BATCH


@dataclass
class TeacherCache:
    """Teacher outputs for every training row, computed once: ``logits [N, K]`` float32 and ``features``
    ``{layer: Tensor[N, ...]}`` (the teacher layers the method reads), on the training device; ``seconds`` spent
    computing them and ``bytes`` they take."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor]
    seconds: float
    bytes: int


def teacher_outputs(teacher: Teacher, x: torch.Tensor, layers: list[str], batch: int | None = None,
                    param: str | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The teacher's logits ``[N, K]`` and features ``{layer: [N, ...]}`` (forward hooks on ``teacher.module``, see
    ``features.FeatureRecorder``) for ``x [N, ...]``, in batches of ``batch`` rows (default
    ``inference_batch(x.device)``), as ordinary (non-inference)
    tensors on ``x``'s device. On the CPU a row's outputs do not depend on the batch it is computed in, so
    these equal the per-step ones bit for bit. Raises ``DistillError('invalid_spec')`` for a layer the teacher
    lacks or a teacher without modules (layers requested of an ONNX teacher)."""
    batch = batch or inference_batch(x.device)
    rec = None
    if layers:
        module = getattr(teacher, "module", None)
        if not isinstance(module, nn.Module):
            raise DistillError("invalid_spec", f"a {teacher.format} teacher cannot give intermediate features", param)
        rec = FeatureRecorder(module, layers, param)
    logits: list[torch.Tensor] = []
    feats: dict[str, list[torch.Tensor]] = {k: [] for k in layers}
    try:
        for i in range(0, x.shape[0], batch):
            if rec is not None:
                rec.active = True
            logits.append(teacher(x[i : i + batch]).clone())
            if rec is not None:
                rec.active = False
                for k, v in rec.pop().items():
                    feats[k].append(v.float().clone())
    finally:
        if rec is not None:
            rec.close()
    return torch.cat(logits), {k: torch.cat(v) for k, v in feats.items()}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """``torch.bfloat16`` / ``torch.float16`` for 'bf16' / 'fp16', None for 'fp32' (no autocast)."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@dataclass
class TrainOutcome:
    """What training did: ``epochs`` (completed, = spec epochs), global optimizer ``steps``,
    ``resumed_from_epoch`` (checkpoint epoch or None), ``final_loss_terms`` (last epoch's mean of every term
    and 'total'), ``elapsed_s`` (training seconds including those before a resume), ``steps_per_epoch``."""

    epochs: int
    steps: int
    steps_per_epoch: int
    resumed_from_epoch: int | None
    final_loss_terms: dict[str, float]
    elapsed_s: float
    history: list[dict[str, Any]] = field(default_factory=list)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps per epoch over ``n`` rows: ``ceil(n / batch_size)``, except that a final batch of a single
    row is dropped (BatchNorm cannot train on one sample), i.e. ``n // batch_size`` when ``n % batch_size == 1``
    and ``n > 1``."""
    if n <= 0:
        raise DistillError("invalid_spec", "the training set is empty", "data.train")
    steps = math.ceil(n / batch_size)
    if n > 1 and n % batch_size == 1:
        steps -= 1
    return max(1, steps)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch`` (1-based) for shuffling and dropout, so a resumed run repeats a straight one."""
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


def make_optimizer(spec: OptimizerSpec, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay; Loshchilov & Hutter 2019) or SGD with momentum, from the spec."""
    if spec.name == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    raise DistillError("invalid_spec", f"unknown optimizer {spec.name!r}", "training.optimizer.name")


class _Cosine:
    """Per-step cosine factor ``0.5 (1 + cos(pi * step / total))`` (Loshchilov & Hutter 2017, SGDR without
    restarts); a class (not a lambda) so LambdaLR's state is plain data."""

    def __init__(self, total_steps: int) -> None:
        self.total_steps = max(1, total_steps)

    def __call__(self, step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))


def _constant(step: int) -> float:
    return 1.0


def make_scheduler(opt: torch.optim.Optimizer, schedule: str, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR``: 'cosine' decays the LR from its peak to 0 over ``total_steps``; 'constant' keeps it."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, _Cosine(total_steps))
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, _constant)
    raise DistillError("invalid_spec", f"unknown schedule {schedule!r}", "training.schedule")


def spec_fingerprint(spec: JobSpec) -> str:
    """sha256 of everything in the spec that changes training (not name, evaluation, export or registry): a checkpoint
    is only resumed by a job with the same fingerprint."""
    payload = spec.model_dump(mode="json", exclude={"name", "evaluation", "export", "registry"})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _cpu_state(obj: Any) -> Any:
    """A snapshot of ``obj`` with every tensor copied to a new CPU tensor (safe to save while training goes on)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_state(v) for v in obj)
    return obj


def save_checkpoint(path: Path, state: dict[str, Any], snapshot_taken: bool = False) -> int:
    """``torch.save`` ``state`` (tensors, numbers, strings, nested dicts/lists only) to ``path`` atomically: write
    ``path.tmp`` then ``os.replace``. ``snapshot_taken``: ``state`` is already a private CPU copy. Returns the
    size in bytes."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state if snapshot_taken else _cpu_state(state), tmp)
    os.replace(tmp, path)
    return path.stat().st_size


class CheckpointWriter:
    """Writes checkpoints in a background thread so the next epoch trains while the previous one is saved.

    ``submit(path, state)`` snapshots ``state`` (tensors copied to CPU, so training may change the originals),
    waits for any write still running, then starts writing it with ``save_checkpoint``. ``wait()`` blocks until
    the last write finished and re-raises its error, if any. At most one write is in flight, so a crash leaves
    either the previous or the new complete checkpoint (``os.replace`` is atomic).
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last_bytes = 0

    def _write(self, path: Path, snapshot: dict[str, Any]) -> None:
        try:
            self.last_bytes = save_checkpoint(path, snapshot, snapshot_taken=True)
        except BaseException as e:  # noqa: BLE001 - handed to the training thread by wait()
            self._error = e

    def submit(self, path: Path, state: dict[str, Any]) -> None:
        """Snapshot ``state`` now and write it to ``path`` in the background."""
        snapshot = _cpu_state(state)
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(path, snapshot), name="stillhouse-checkpoint", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until no write is in flight; raise the last write's error (as ``OSError`` etc.)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """Read a checkpoint with ``torch.load(weights_only=True)``; None when absent or unreadable."""
    if not path.exists():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a corrupt checkpoint means starting over, not failing
        return None
    return obj if isinstance(obj, dict) else None


@torch.no_grad()
def batched_logits(fn: Any, x: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    """Concatenated ``fn(x[i:i+batch])`` over ``x [N, ...]`` → ``[N, K]`` (no grad); ``batch`` defaults to
    ``inference_batch(x.device)``."""
    batch = batch or inference_batch(x.device)
    return torch.cat([fn(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


def train_student(
    *,
    student: nn.Module,
    teacher: Teacher,
    method: Method | CombinedMethod,
    data: DataBundle,
    training: TrainingSpec,
    device: torch.device,
    workdir: Path,
    reporter: Reporter,
    deadline: float,
    fingerprint: str,
    teacher_cache: TeacherCache | None = None,
    split_prefix: str = "",
    checkpoint_name: str = CHECKPOINT_NAME,
    owns_metrics: bool = True,
) -> TrainOutcome:
    """Train ``student`` (already on ``device``) to match ``teacher`` with ``method`` on ``data.train_x/y``.

    Epoch ``e`` shuffles with ``torch.Generator`` seeded by ``epoch_seed(training.seed, e)`` and reseeds the
    global RNG the same way (dropout), so a run resumed from ``workdir/checkpoint.pt`` (written at every epoch
    end, with student, optimizer and scheduler state) ends bit-identical to a straight one on CPU.
    ``deadline`` is a ``time.perf_counter()`` value. Reports metrics (split 'train': 'loss/<term>' and
    'loss/total' means every ``log_every_steps`` steps and at epoch end, 'lr', 'top1'; split 'train_epoch':
    epoch means of the loss terms; split 'val': 'top1', 'agreement') and progress. ``split_prefix`` (e.g.
    'baseline_') is put before every split name, ``checkpoint_name`` names the checkpoint file, and
    ``owns_metrics=False`` (a second training pass in the same job) discards, when it (re)starts, only the rows of
    its own splits after its checkpoint's epoch, leaving the main pass's rows alone.

    ``method`` may read features: its ``student_layers`` are captured with forward hooks on ``student``, its
    ``teacher_layers`` come from ``teacher_cache`` when given (then the teacher is not run per step; the cache's
    rows are the rows of ``data.train_x``) or from hooks on the teacher per step. A method with learned parts
    (adapters) is trained with the student and saved in the checkpoint. ``training.precision`` 'bf16'/'fp16' runs
    the student's forward under ``torch.autocast`` on ``device`` (fp16 with a gradient scaler); losses are
    computed in float32. After every epoch the student's parameters are checked to be finite.

    When ``reporter.should_stop()`` is true before a step and ``reporter.checkpoint_on_stop()`` too (a hand-back: the
    worker is shutting down), the loop first writes a *partial* checkpoint of the step it reached (the epoch's finished
    steps, its running loss sums and predictions, and the RNG state), from which a resumed run skips those steps and
    continues bit-identical to a straight run on CPU.

    Raises ``StopRequested`` (``reporter.should_stop()``, checked before every step),
    ``DistillError('max_runtime_exceeded')`` (deadline passed between steps) and
    ``DistillError('non_finite_loss')`` (a NaN/inf loss, detected at the next log point or epoch end).
    """
    n = int(data.train_x.shape[0])
    bs = min(training.batch_size, n)
    spe = steps_per_epoch(n, bs)
    epochs = training.epochs
    total_steps = epochs * spe
    log_every = training.log_every_steps
    params = list(student.parameters()) + [p for p in method.parameters() if p.requires_grad]
    opt = make_optimizer(training.optimizer, params)
    sched = make_scheduler(opt, training.schedule, total_steps)
    names = method.term_names + ["total"]
    ckpt_path = workdir / checkpoint_name
    amp_dtype = autocast_dtype(training.precision)
    if training.precision == "fp16" and device.type != "cuda":
        raise DistillError("invalid_spec", "precision 'fp16' needs a CUDA device; use 'bf16' on the CPU", "training.precision")
    scaler = torch.amp.GradScaler(device.type) if training.precision == "fp16" else None
    sp = split_prefix
    s_layers = list(getattr(method, "student_layers", []))
    t_layers = [] if teacher_cache is not None else list(getattr(method, "teacher_layers", []))
    uses_teacher = bool(getattr(method, "needs_teacher", True))

    start_epoch, step, prior_elapsed = 1, 0, 0.0
    resumed: int | None = None
    final_terms: dict[str, float] = {}
    own_splits = [split_prefix + name for name in ("train", "train_epoch", "val")]  # the rows this pass writes
    partial: dict[str, Any] | None = None  # the unfinished epoch's state, from a hand-back checkpoint
    ckpt = load_checkpoint(ckpt_path)
    if ckpt is not None and (ckpt.get("version") not in (CHECKPOINT_VERSION, PARTIAL_CHECKPOINT_VERSION)
                             or ckpt.get("fingerprint") != fingerprint):
        reporter.event("checkpoint_ignored", "found a checkpoint of a different job spec; starting from scratch", None)
        ckpt = None
    if ckpt is not None:
        student.load_state_dict(ckpt["student"])
        if "method" in ckpt:
            method.load_state_dict(ckpt["method"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        resumed = int(ckpt["epoch"])
        start_epoch, step, prior_elapsed = resumed + 1, int(ckpt["step"]), float(ckpt["elapsed_s"])
        final_terms = {k: float(v) for k, v in ckpt.get("loss_terms", {}).items()}
        partial = ckpt.get("partial")
        if partial is not None:
            reporter.discard_metrics_after(resumed, None if owns_metrics else own_splits, step=step)
            reporter.event("resumed", f"resumed within epoch {resumed + 1} at step {step} ({int(partial['steps_done'])} of its "
                           f"{spe} steps done) from the checkpoint saved when the job was handed back",
                           {"epoch": resumed, "step": step, "steps_done_in_epoch": int(partial["steps_done"])})
        else:
            reporter.discard_metrics_after(resumed, None if owns_metrics else own_splits)
            reporter.event("resumed", f"resumed from the checkpoint of epoch {resumed} (step {step})",
                           {"epoch": resumed, "step": step})
    else:
        reporter.discard_metrics_after(0, None if owns_metrics else own_splits)

    x = data.train_x.to(device)
    y = data.train_y.to(device)
    labelled = y >= 0
    vx = data.val_x.to(device)
    vy = data.val_y.to(device)
    val_labelled = bool((vy >= 0).any())
    teacher_val_pred = batched_logits(teacher, vx).argmax(dim=1)

    run_start = time.perf_counter()
    start_step = step
    progress_every = max(1, spe // 20)
    history: list[dict[str, Any]] = []
    n_terms = len(names)
    writer = CheckpointWriter()
    s_rec = FeatureRecorder(student, s_layers, "method") if s_layers else None
    t_module = getattr(teacher, "module", None)
    if t_layers and not isinstance(t_module, nn.Module):
        raise DistillError("invalid_spec", f"a {teacher.format} teacher cannot give intermediate features", "method")
    t_rec = FeatureRecorder(t_module, t_layers, "method") if t_layers else None
    no_feats: dict[str, torch.Tensor] = {}

    def emit_progress(epoch: int) -> None:
        now = time.perf_counter()
        done = step - start_step
        eta = (now - run_start) / done * (total_steps - step) if done > 0 else None
        reporter.progress(epoch=epoch, epochs=epochs, step=step, total_steps=total_steps,
                          fraction=step / total_steps, eta_s=eta)

    def check_finite(values: list[float], epoch: int) -> None:
        if not all(math.isfinite(v) for v in values):
            shown = ", ".join(f"{k}={v:.4g}" for k, v in zip(names, values))
            raise DistillError(
                "non_finite_loss",
                f"the loss became non-finite by step {step} (epoch {epoch}): {shown}; try a lower learning rate "
                f"(now {training.optimizer.lr:g}){', precision fp32' if amp_dtype is not None else ''} or check the teacher's outputs",
                "training.optimizer.lr",
            )

    def check_finite_weights(epoch: int) -> None:
        with torch.no_grad():
            ok = bool(torch.isfinite(torch.stack([p.detach().float().sum() for p in params])).all()) if params else True
        if not ok:
            raise DistillError("non_finite_loss", f"the student's weights became non-finite by step {step} (epoch {epoch}); try a "
                               f"lower learning rate (now {training.optimizer.lr:g})"
                               f"{' or precision fp32' if amp_dtype is not None else ''}", "training.optimizer.lr")

    def save_partial(epoch: int, steps_done: int, log_acc: torch.Tensor, ep_acc: torch.Tensor, log_count: int,
                     preds: torch.Tensor) -> None:
        """Write the hand-back checkpoint: ``steps_done`` steps of ``epoch`` finished, the next one not started."""
        writer.wait()  # the previous epoch's checkpoint first, so this newer one is the one left on disk
        rng = {"cpu": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        save_checkpoint(ckpt_path, {
            "version": PARTIAL_CHECKPOINT_VERSION, "fingerprint": fingerprint, "epoch": epoch - 1, "step": step,
            "student": student.state_dict(), "method": method.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "elapsed_s": prior_elapsed + time.perf_counter() - run_start,
            "loss_terms": final_terms,
            "partial": {"epoch": epoch, "steps_done": steps_done, "rng": rng, "log_acc": log_acc, "ep_acc": ep_acc,
                        "log_count": log_count, "preds": preds},
        })
        reporter.event("checkpoint_saved", f"checkpoint at step {step} ({steps_done} of the {spe} steps of epoch {epoch}) "
                       "saved to hand the job back", {"epoch": epoch - 1, "step": step, "steps_done_in_epoch": steps_done})

    try:
        for epoch in range(start_epoch, epochs + 1):
            es = epoch_seed(training.seed, epoch)
            torch.manual_seed(es)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(es)).to(device)
            seen = perm[: min(n, spe * bs)]
            labelled_seen = int(labelled[seen].sum())
            student.train()
            log_acc = torch.zeros(n_terms, device=device)
            ep_acc = torch.zeros(n_terms, device=device)
            preds = torch.empty(seen.shape[0], dtype=torch.int64, device=device)
            log_count = 0
            first = 0
            if partial is not None and int(partial["epoch"]) == epoch:  # continue the epoch a hand-back interrupted
                first = int(partial["steps_done"])
                torch.set_rng_state(partial["rng"]["cpu"])
                if device.type == "cuda" and "cuda" in partial["rng"]:
                    torch.cuda.set_rng_state(partial["rng"]["cuda"], device)
                log_acc.copy_(partial["log_acc"].to(device))
                ep_acc.copy_(partial["ep_acc"].to(device))
                preds.copy_(partial["preds"].to(device))
                log_count = int(partial["log_count"])
                partial = None
            for i in range(first, spe):
                if reporter.should_stop():
                    if getattr(reporter, "checkpoint_on_stop", lambda: False)():
                        save_partial(epoch, i, log_acc, ep_acc, log_count, preds)
                    raise StopRequested(f"stop requested before step {step + 1}")
                if time.perf_counter() > deadline:
                    raise DistillError("max_runtime_exceeded",
                                       f"training.max_runtime_s={training.max_runtime_s:g} s reached at step {step} of {total_steps}",
                                       "training.max_runtime_s")
                idx = perm[i * bs : (i + 1) * bs]
                xb = x[idx]
                yb = y[idx]
                t_feats = no_feats
                if teacher_cache is not None:
                    t_logits = teacher_cache.logits[idx]
                    if teacher_cache.features:
                        t_feats = {k: v[idx] for k, v in teacher_cache.features.items()}
                elif uses_teacher:
                    if t_rec is not None:
                        t_rec.active = True
                    t_logits = teacher(xb).clone()  # out of inference mode so autograd may save it
                    if t_rec is not None:
                        t_rec.active = False
                        t_feats = {k: v.float().clone() for k, v in t_rec.pop().items()}
                else:
                    t_logits = None
                if s_rec is not None:
                    s_rec.active = True
                if amp_dtype is None:
                    s_logits = student(xb)
                else:
                    with torch.autocast(device_type=device.type, dtype=amp_dtype):
                        s_logits = student(xb)
                    s_logits = s_logits.float()
                s_feats = no_feats
                if s_rec is not None:
                    s_rec.active = False
                    s_feats = s_rec.pop()
                    if amp_dtype is not None:
                        s_feats = {k: v.float() for k, v in s_feats.items()}
                terms = method(s_logits, t_logits, yb, epoch=epoch, student_features=s_feats, teacher_features=t_feats)
                values = list(terms.values())
                total = values[0]
                for v in values[1:]:
                    total = total + v
                opt.zero_grad(set_to_none=True)
                if scaler is None:
                    total.backward()
                    opt.step()
                else:
                    scaler.scale(total).backward()
                    scaler.step(opt)
                    scaler.update()
                sched.step()
                step += 1
                log_count += 1
                with torch.no_grad():
                    log_acc.add_(torch.stack([*values, total]))
                    torch.argmax(s_logits, dim=1, out=preds[i * bs : i * bs + xb.shape[0]])
                last = i == spe - 1
                if step % log_every == 0 or last:
                    means = (log_acc / log_count).tolist()
                    check_finite(means, epoch)
                    reporter.metrics([MetricRow(f"loss/{k}", f"{sp}train", step, epoch, v) for k, v in zip(names, means)])
                    ep_acc.add_(log_acc)
                    log_acc.zero_()
                    log_count = 0
                if step % progress_every == 0 or last:
                    emit_progress(epoch)

            ep_means = (ep_acc / spe).tolist()
            check_finite(ep_means, epoch)
            check_finite_weights(epoch)
            final_terms = dict(zip(names, ep_means))
            student.eval()
            s_val = batched_logits(student, vx)
            student.train()
            s_pred = s_val.argmax(dim=1)
            agreement = float((s_pred == teacher_val_pred).float().mean())
            lr = float(sched.get_last_lr()[0])
            rows = [MetricRow(f"loss/{k}", f"{sp}train_epoch", step, epoch, v) for k, v in final_terms.items()]
            rows.append(MetricRow("lr", f"{sp}train", step, epoch, lr))
            record: dict[str, Any] = {"epoch": epoch, "step": step, "lr": lr, "agreement": agreement, **final_terms}
            if labelled_seen:
                top1_train = int((preds == y[seen]).sum()) / labelled_seen  # unlabelled rows (-1) never match
                rows.append(MetricRow("top1", f"{sp}train", step, epoch, top1_train))
                record["train_top1"] = top1_train
            if val_labelled:
                mask = vy >= 0
                top1_val = float((s_pred[mask] == vy[mask]).float().mean())
                rows.append(MetricRow("top1", f"{sp}val", step, epoch, top1_val))
                record["val_top1"] = top1_val
            rows.append(MetricRow("agreement", f"{sp}val", step, epoch, agreement))
            reporter.metrics(rows)
            history.append(record)
            elapsed = prior_elapsed + time.perf_counter() - run_start
            writer.submit(ckpt_path, {
                "version": CHECKPOINT_VERSION, "fingerprint": fingerprint, "epoch": epoch, "step": step,
                "student": student.state_dict(), "method": method.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "elapsed_s": elapsed, "loss_terms": final_terms,
            })
            reporter.event("checkpoint_saved", f"epoch {epoch} checkpoint written", {"epoch": epoch, "step": step})
            emit_progress(epoch)
    except BaseException:
        with contextlib.suppress(Exception):  # a stop or failure still leaves the last epoch's checkpoint complete
            writer.wait()
        raise
    finally:
        for rec in (s_rec, t_rec):
            if rec is not None:
                rec.close()
    writer.wait()

    student.eval()
    return TrainOutcome(epochs=epochs, steps=step, steps_per_epoch=spe, resumed_from_epoch=resumed,
                        final_loss_terms=final_terms, elapsed_s=prior_elapsed + time.perf_counter() - run_start,
                        history=history)
