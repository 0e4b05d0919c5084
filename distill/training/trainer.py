"""The one trainer: every task family (image/tabular classification, sequence classification, sentence embedding)
trains through ``Trainer.fit``; what differs between them is a small ``TaskAdapter``.

The trainer owns: seeding (``epoch_seed`` reseeds the global RNG and orders the batches of each epoch), the
epoch/step loop, resuming from epoch checkpoints and from hand-back (partial) checkpoints mid-epoch, precision and
autocast (``Precision``), device-side accumulation of the loss terms (read back only every ``log_every_steps`` steps
and at epoch ends, so a step costs no host sync), the finite-loss and finite-weight guards, ``should_stop`` and the
runtime deadline, progress, metric rows and events (``resumed``, ``checkpoint_saved``, ``checkpoint_ignored``,
``checkpoint_unreadable``). Its shape follows torchdistill's ``DistillationBox`` and mdistiller's ``train_iter``:
one loop, the task's parts plugged in.

An adapter says how batches are made (``epoch_plan``: the index batches of an epoch from its seed; ``make_batch``),
the teacher's forward (from a cache or live, no grad), the student's forward (run under autocast by the trainer),
the named loss terms, optionally the training predictions (for train top-1) and its per-epoch evaluation. Per-token
losses with masks or a top-k teacher cache (causal LMs) live entirely in an adapter: the trainer only sees scalar
loss terms.

Data-parallel (``training.devices`` > 1, a ``Parallel`` handle from ``distill.training.parallel``): the same loop in
every rank, the student wrapped in ``DistributedDataParallel`` (Li et al. 2020), each rank a fixed slice of every
global batch, the terms weighted by the adapter's ``loss_count`` over the global count, rank 0's stop / hand-back /
deadline flags all-reduced with that count each step, and checkpoints, metrics and evaluation on rank 0 only.
"""

from __future__ import annotations

import contextlib
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import DistillError, StopRequested
from ..reporter import MetricRow, Reporter
from ..spec import TrainingSpec
from .checkpoints import CHECKPOINT_VERSION, PARTIAL_CHECKPOINT_VERSION, CheckpointStore, read_checkpoint
from .optim import epoch_seed, make_optimizer, make_scheduler
from .parallel import Parallel
from .precision import Precision


class TaskAdapter(ABC):
    """What a task family plugs into the trainer. Batches are identified by index tensors ``[B]`` (int64) into the
    adapter's training rows; ``term_names`` lists the loss terms ``loss_terms`` returns, in order."""

    term_names: list[str]

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """The trained modules by name, 'student' first (then e.g. a method's adapters, a projection): their
        parameters are optimized in this order and their state dicts saved in checkpoints under these names."""

    @abstractmethod
    def steps_per_epoch(self, batch_size: int) -> int:
        """Optimizer steps per epoch (= ``len(epoch_plan(...))``)."""

    @abstractmethod
    def epoch_plan(self, seed: int, batch_size: int) -> list[torch.Tensor]:
        """The epoch's index batches, in order, a pure function of ``seed`` (``epoch_seed(training.seed, epoch)``)."""

    @abstractmethod
    def make_batch(self, index: torch.Tensor) -> Any:
        """The batch of rows ``index`` (inputs on the training device)."""

    @abstractmethod
    def teacher_forward(self, batch: Any) -> Any:
        """The teacher's outputs for ``batch`` (cached or computed without grad); None when the loss needs none."""

    @abstractmethod
    def student_forward(self, batch: Any) -> Any:
        """The student's outputs for ``batch`` (tensors, or dicts/tuples of them); run under autocast."""

    @abstractmethod
    def loss_terms(self, student_out: Any, teacher_out: Any, batch: Any, epoch: int) -> dict[str, torch.Tensor]:
        """Named, weighted scalar loss terms (float32, in ``term_names`` order); the trainer sums them."""

    def train_labels(self, index: torch.Tensor) -> torch.Tensor | None:
        """Labels ``[B]`` int64 (-1 = unlabelled) of rows ``index`` for train top-1, or None (no predictions)."""
        return None

    def predict_into(self, student_out: Any, out: torch.Tensor) -> None:
        """Write the predicted classes of the batch into ``out [B]`` (int64; called when ``train_labels`` gives labels)."""
        raise NotImplementedError

    @abstractmethod
    def evaluate(self, epoch: int) -> list[tuple[str, str, float]]:
        """End-of-epoch validation: ``(metric name, split, value)`` rows, e.g. ``('top1', 'val', 0.93)``. Leaves the
        student in train mode."""

    def close(self) -> None:
        """Release hooks and the like (called once training ends, also on failure)."""

    def loss_count(self, batch: Any) -> int:
        """Data-parallel training: how many items (rows, target tokens) the batch's loss terms are means over; the
        trainer all-reduces it to weigh each rank's terms by its share of the global batch. Raises
        ``NotImplementedError`` for an adapter that does not support ``training.devices`` > 1."""
        raise NotImplementedError(f"{type(self).__name__} does not support data-parallel training")

    def wrap_student(self, module: nn.Module) -> None:
        """Data-parallel training: run the training forward of the student through ``module`` (its
        ``DistributedDataParallel`` wrapper) from now on; evaluation keeps the bare student. Raises
        ``NotImplementedError`` for an adapter that does not support ``training.devices`` > 1."""
        raise NotImplementedError(f"{type(self).__name__} does not support data-parallel training")


@dataclass
class TrainOutcome:
    """What training did: ``epochs`` (completed, = spec epochs), global optimizer ``steps``,
    ``resumed_from_epoch`` (checkpoint epoch or None), ``final_loss_terms`` (last epoch's mean of every term
    and 'total'), ``elapsed_s`` (training seconds including those before a resume), ``steps_per_epoch``,
    ``history`` (one dict per epoch trained in this run: epoch, step, lr, loss terms, metrics)."""

    epochs: int
    steps: int
    steps_per_epoch: int
    resumed_from_epoch: int | None
    final_loss_terms: dict[str, float]
    elapsed_s: float
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Epoch:
    """The running state of one epoch: its batches, the device-side loss sums since the last log point
    (``log_acc``) and over the epoch (``ep_acc``), the training predictions so far, and the labels they are scored on."""

    number: int
    plan: list[torch.Tensor]
    offsets: list[int]
    log_acc: torch.Tensor
    ep_acc: torch.Tensor
    preds: torch.Tensor | None
    seen_labels: torch.Tensor | None
    labelled_seen: int
    log_count: int = 0
    first: int = 0


class Trainer:
    """Trains ``adapter``'s modules per ``training`` (epochs, batch size, optimizer, schedule, seed, precision,
    log_every_steps, max_runtime_s) on ``device``.

    ``deadline`` is a ``time.perf_counter()`` value. Checkpoints go to ``workdir`` as ``checkpoint_stem``-named files
    (``CheckpointStore``), tagged with ``fingerprint`` (a checkpoint of another fingerprint is ignored). Metric rows:
    split 'train' ('loss/<term>' and 'loss/total' means every ``log_every_steps`` steps and at epoch ends, 'lr',
    'top1' when the adapter predicts classes), 'train_epoch' (the epoch's mean of each term) and the adapter's
    evaluation rows; ``split_prefix`` (e.g. 'baseline_') goes before every split. ``owns_metrics=False`` (a second pass
    of the same job) discards, when it (re)starts, only its own splits' rows after its checkpoint.

    ``parallel`` (``training.devices`` > 1, see ``distill.training.parallel``): this process is one rank of a
    data-parallel group. The student is wrapped in ``DistributedDataParallel``; each step the rank trains on rows
    ``rank, rank + world, ...`` of the global batch and scales the loss terms by ``local count · world / global count``
    (``adapter.loss_count``, all-reduced together with rank 0's stop / hand-back / deadline flags), so the averaged
    gradient and the logged losses are the single-process ones of the global batch. Rank 0 alone writes checkpoints
    (its reporter records metrics and events; the helpers' reporters are silent) and evaluates; every rank loads the
    checkpoint rank 0 resumes from. With ``parallel`` None (or a world of 1) nothing of this runs.
    """

    def __init__(self, adapter: TaskAdapter, training: TrainingSpec, *, device: torch.device, workdir: Path,
                 reporter: Reporter, deadline: float, fingerprint: str, split_prefix: str = "",
                 checkpoint_stem: str = "checkpoint", owns_metrics: bool = True, parallel: Parallel | None = None) -> None:
        self.adapter, self.training, self.device, self.reporter = adapter, training, device, reporter
        self.par = parallel if parallel is not None and parallel.world > 1 else None
        self.deadline, self.fingerprint, self.prefix = deadline, fingerprint, split_prefix
        self.store = CheckpointStore(workdir, checkpoint_stem)
        self._unannounced: tuple[int, int] | None = None  # (epoch, step) of a background checkpoint write not yet announced
        self.own_splits = None if owns_metrics else [split_prefix + s for s in ("train", "train_epoch", "val")]
        self.precision = Precision(training.precision, device)
        self.modules = adapter.modules()
        self.params = [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]
        self.names = list(adapter.term_names) + ["total"]
        self.batch_size = training.batch_size
        self.spe = adapter.steps_per_epoch(training.batch_size)
        self.total_steps = training.epochs * self.spe
        self.opt = make_optimizer(training.optimizer, self.params)
        self.sched = make_scheduler(self.opt, training.schedule, self.total_steps)
        self.step = 0
        self.prior_elapsed = 0.0
        self.final_terms: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []
        if self.par is not None:
            self._wrap_student()

    def _wrap_student(self) -> None:
        """Wrap the student in ``DistributedDataParallel`` (which broadcasts rank 0's weights to every rank) and hand
        the wrapper to the adapter. Raises ``DistillError('invalid_spec')`` when other modules train too (only the
        student is synchronised)."""
        from torch.nn.parallel import DistributedDataParallel

        others = [n for n, m in self.modules.items() if n != "student" and any(p.requires_grad for p in m.parameters())]
        if others:
            raise DistillError("invalid_spec", f"training.devices > 1 synchronises the student only; this method also trains "
                               f"{', '.join(others)}", "training.devices")
        student = self.modules["student"]
        ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] if self.device.type == "cuda" else None
        self.adapter.wrap_student(DistributedDataParallel(student, device_ids=ids, forward_sync_buffers=False))

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainOutcome:
        """Train from the newest good checkpoint (or from scratch) to ``training.epochs``; returns the outcome with
        the student in eval mode.

        Epoch ``e`` reseeds the global RNG (dropout) and orders its batches with ``epoch_seed(training.seed, e)``, so a
        run resumed from a checkpoint ends bit-identical to a straight one on CPU. When ``reporter.should_stop()`` is
        true before a step and ``reporter.checkpoint_on_stop()`` too (a hand-back), a partial checkpoint of the step
        reached is written first (the epoch's finished steps, loss sums, predictions and RNG state).

        Raises ``StopRequested`` (``should_stop``, checked before every step), ``DistillError('max_runtime_exceeded')``
        (deadline passed between steps), ``DistillError('non_finite_loss')`` (a NaN/inf loss, seen at the next log point
        or epoch end, or non-finite weights at an epoch end) and ``OSError`` (a checkpoint could not be written).
        """
        self.run_start, self.start_step = time.perf_counter(), 0
        self.progress_every = max(1, self.spe // 20)
        try:
            start_epoch, partial, resumed = self._resume()
            if self.par is None or self.par.is_main:
                self.store.clear_temporary()
            self.run_start, self.start_step = time.perf_counter(), self.step
            for epoch in range(start_epoch, self.training.epochs + 1):
                ep = self._begin_epoch(epoch, partial if partial is not None and int(partial["epoch"]) == epoch else None)
                partial = None
                for i in range(ep.first, self.spe):
                    if self.par is None:
                        self._before_step(ep, i)
                        self._train_step(ep, i)
                    else:
                        self._parallel_step(ep, i)
                self._end_epoch(ep)
        except RuntimeError as e:  # data-parallel: a rank that ended shows up as a collective's error here
            with contextlib.suppress(Exception):
                self.store.wait()
            if self.par is not None:
                err = self.par.translate(e)
                if err is not e:
                    raise err from e
            raise
        except BaseException:
            with contextlib.suppress(Exception):  # a stop or failure still leaves the last checkpoint complete
                self.store.wait()
            raise
        finally:
            self.adapter.close()
        self._announce_checkpoint(block=True)
        self.modules["student"].eval()
        return TrainOutcome(epochs=self.training.epochs, steps=self.step, steps_per_epoch=self.spe, resumed_from_epoch=resumed,
                            final_loss_terms=self.final_terms, elapsed_s=self._elapsed(), history=self.history)

    def _elapsed(self) -> float:
        return self.prior_elapsed + time.perf_counter() - self.run_start

    def _resume(self) -> tuple[int, dict[str, Any] | None, int | None]:
        """Load the newest good checkpoint into the modules, optimizer, scheduler and scaler; discard the metric rows
        after it; return (first epoch to run, the partial epoch's state or None, the checkpoint's epoch or None)."""
        rep = self.reporter
        if self.par is None or self.par.is_main:
            ckpt = self.store.load_latest(rep)
            if ckpt is not None and (ckpt.get("version") not in (CHECKPOINT_VERSION, PARTIAL_CHECKPOINT_VERSION)
                                     or ckpt.get("fingerprint") != self.fingerprint):
                rep.event("checkpoint_ignored", "found a checkpoint of a different job spec; starting from scratch (its files are "
                          "removed)", None)
                self.store.remove_all()
                ckpt = None
        if self.par is not None:  # every rank resumes from the file rank 0 chose (or none)
            chosen = self.par.broadcast_text(str(self.store.last_loaded) if self.par.is_main and ckpt is not None else None)
            if not self.par.is_main:
                ckpt = read_checkpoint(Path(chosen)) if chosen else None
        if ckpt is None:
            rep.discard_metrics_after(0, self.own_splits)
            return 1, None, None
        for name, module in self.modules.items():
            module.load_state_dict(ckpt["modules"][name])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.precision.load_state_dict(ckpt.get("precision", {}))
        resumed = int(ckpt["epoch"])
        self.step, self.prior_elapsed = int(ckpt["step"]), float(ckpt["elapsed_s"])
        self.final_terms = {k: float(v) for k, v in ckpt.get("loss_terms", {}).items()}
        partial = ckpt.get("partial")
        if partial is not None:
            done = int(partial["steps_done"])
            rep.discard_metrics_after(resumed, self.own_splits, step=self.step)
            rep.event("resumed", f"resumed within epoch {resumed + 1} at step {self.step} ({done} of its {self.spe} steps done) "
                      "from the checkpoint saved when the job was handed back",
                      {"epoch": resumed, "step": self.step, "steps_done_in_epoch": done})
        else:
            rep.discard_metrics_after(resumed, self.own_splits)
            rep.event("resumed", f"resumed from the checkpoint of epoch {resumed} (step {self.step})", {"epoch": resumed, "step": self.step})
        return resumed + 1, partial, resumed

    def _begin_epoch(self, epoch: int, partial: dict[str, Any] | None) -> _Epoch:
        es = epoch_seed(self.training.seed, epoch)
        torch.manual_seed(es)
        plan = self.adapter.epoch_plan(es, self.batch_size)
        offsets = [0]
        for b in plan:
            offsets.append(offsets[-1] + int(b.shape[0]))
        seen_labels = self.adapter.train_labels(torch.cat(plan) if len(plan) > 1 else plan[0])
        labelled_seen = int((seen_labels >= 0).sum()) if seen_labels is not None else 0
        for m in self.modules.values():
            m.train()
        n_terms = len(self.names)
        if seen_labels is None:
            preds = None
        elif self.par is None:
            preds = torch.empty(offsets[-1], dtype=torch.int64, device=self.device)
        else:  # each rank fills its own rows; the others stay -1 until the epoch end's max-reduction
            preds = torch.full((offsets[-1],), -1, dtype=torch.int64, device=self.device)
        ep = _Epoch(epoch, plan, offsets, torch.zeros(n_terms, device=self.device), torch.zeros(n_terms, device=self.device),
                    preds, seen_labels, labelled_seen)
        if partial is not None:  # continue the epoch a hand-back interrupted
            ep.first = int(partial["steps_done"])
            self.precision.set_rng_state(partial["rng"])
            ep.log_acc.copy_(partial["log_acc"].to(self.device))
            if self.par is not None and not self.par.is_main:
                ep.log_acc.zero_()  # data-parallel: the saved log_acc is the ranks' sum; rank 0 alone carries it on
            ep.ep_acc.copy_(partial["ep_acc"].to(self.device))
            if preds is not None:
                preds.copy_(partial["preds"].to(self.device))
            ep.log_count = int(partial["log_count"])
        return ep

    def _before_step(self, ep: _Epoch, i: int) -> None:
        """The stop and deadline checks before step ``i`` of the epoch (a hand-back saves a partial checkpoint first)."""
        self._announce_checkpoint()
        if self.reporter.should_stop():
            if getattr(self.reporter, "checkpoint_on_stop", lambda: False)():
                self._save_partial(ep, i)
            raise StopRequested(f"stop requested before step {self.step + 1}")
        if time.perf_counter() > self.deadline:
            raise self._deadline_error()

    def _deadline_error(self) -> DistillError:
        """The ``max_runtime_exceeded`` error at the current step."""
        return DistillError("max_runtime_exceeded",
                            f"training.max_runtime_s={self.training.max_runtime_s:g} s reached at step {self.step} of {self.total_steps}",
                            "training.max_runtime_s")

    def _parallel_step(self, ep: _Epoch, i: int) -> None:
        """Step ``i`` as one rank of a data-parallel group: the rank's slice of the global batch, one all-reduce of
        ``[local count, stop, hand-back, deadline passed]`` (the flags are rank 0's), then the agreed stop (a hand-back
        saves the partial checkpoint first), the deadline, or the step with the terms scaled to the global mean."""
        par, a = self.par, self.adapter
        self._announce_checkpoint()
        flags = [0.0, 0.0, 0.0]
        if par.is_main:
            if self.reporter.should_stop():
                flags = [1.0, 1.0 if getattr(self.reporter, "checkpoint_on_stop", lambda: False)() else 0.0, 0.0]
            elif time.perf_counter() > self.deadline:
                flags[2] = 1.0
        index = ep.plan[i]
        mine = index[par.rank::par.world]
        empty = int(mine.shape[0]) == 0  # a global batch smaller than the world: this rank runs one row at weight 0
        batch = a.make_batch(index[:1] if empty else mine)
        local = 0 if empty else int(a.loss_count(batch))
        stats = par.all_reduce(torch.tensor([float(local), *flags], dtype=torch.float64, device=par.device))
        total_count, stop, hand_back, late = (float(v) for v in stats.tolist())
        if stop:
            if hand_back:
                self._save_partial(ep, i)
            raise StopRequested(f"stop requested before step {self.step + 1}")
        if late:
            raise self._deadline_error()
        if total_count <= 0:
            raise DistillError("invalid_spec", f"global batch {i + 1} of epoch {ep.number} has nothing to train on", "data.train")
        self._train_step(ep, i, batch=batch, scale=local * par.world / total_count, rows=None if empty else (par.rank, par.world))

    def _train_step(self, ep: _Epoch, i: int, batch: Any = None, scale: float | None = None,
                    rows: tuple[int, int] | None = None) -> None:
        """Step ``i`` of the epoch. Data-parallel (from ``_parallel_step``): ``batch`` is the rank's slice, ``scale`` its
        weight (the terms become this rank's share of the global mean), ``rows`` ``(rank, world)`` places its training
        predictions (None: the slice is a weight-0 stand-in)."""
        a, prec = self.adapter, self.precision
        if batch is None:
            batch = a.make_batch(ep.plan[i])
        t_out = a.teacher_forward(batch)
        with prec.autocast():
            s_out = a.student_forward(batch)
        s_out = prec.float32(s_out)
        values = list(a.loss_terms(s_out, t_out, batch, ep.number).values())
        if scale is not None:
            values = [v * scale for v in values]
        total = values[0]
        for v in values[1:]:
            total = total + v
        prec.backward_step(total, self.opt)
        self.sched.step()
        self.step += 1
        ep.log_count += 1
        with torch.no_grad():
            ep.log_acc.add_(torch.stack([*values, total]))
            if ep.preds is not None and self.par is None:
                a.predict_into(s_out, ep.preds[ep.offsets[i]:ep.offsets[i + 1]])
            elif ep.preds is not None and rows is not None:
                mine = torch.empty(int(batch[0].shape[0]), dtype=torch.int64, device=self.device)
                a.predict_into(s_out, mine)
                ep.preds[ep.offsets[i]:ep.offsets[i + 1]][rows[0]::rows[1]] = mine
        last = i == self.spe - 1
        if self.step % self.training.log_every_steps == 0 or last:
            acc = ep.log_acc if self.par is None else self.par.all_reduce(ep.log_acc.clone()) / self.par.world
            means = (acc / ep.log_count).tolist()
            self._check_finite(means, ep.number)
            self.reporter.metrics([MetricRow(f"loss/{k}", f"{self.prefix}train", self.step, ep.number, v)
                                   for k, v in zip(self.names, means)])
            ep.ep_acc.add_(acc)
            ep.log_acc.zero_()
            ep.log_count = 0
        if self.step % self.progress_every == 0 or last:
            self._progress(ep.number)

    def _end_epoch(self, ep: _Epoch) -> None:
        """Epoch means, the guards, evaluation, the epoch's metric rows, its checkpoint (in the background) and progress."""
        epoch, sp = ep.number, self.prefix
        if self.par is not None and ep.preds is not None:
            self.par.all_reduce(ep.preds, op="max")  # every rank's predictions of its rows
        ep_means = (ep.ep_acc / self.spe).tolist()
        self._check_finite(ep_means, epoch)
        self._check_finite_weights(epoch)
        self.final_terms = dict(zip(self.names, ep_means))
        evaluated = self.adapter.evaluate(epoch) if self.par is None or self.par.is_main else []
        lr = float(self.sched.get_last_lr()[0])
        rows = [MetricRow(f"loss/{k}", f"{sp}train_epoch", self.step, epoch, v) for k, v in self.final_terms.items()]
        rows.append(MetricRow("lr", f"{sp}train", self.step, epoch, lr))
        record: dict[str, Any] = {"epoch": epoch, "step": self.step, "lr": lr, **self.final_terms}
        if ep.labelled_seen:
            top1_train = int((ep.preds == ep.seen_labels).sum()) / ep.labelled_seen  # unlabelled rows (-1) never match
            rows.append(MetricRow("top1", f"{sp}train", self.step, epoch, top1_train))
            record["train_top1"] = top1_train
        for name, split, value in evaluated:
            rows.append(MetricRow(name, f"{sp}{split}", self.step, epoch, value))
            record[f"{split}_{name}"] = value
        self.reporter.metrics(rows)
        self.history.append(record)
        if self.par is None or self.par.is_main:
            self.store.submit(self._state(epoch))
            self._unannounced = (epoch, self.step)
        self._progress(epoch)

    def _announce_checkpoint(self, block: bool = False) -> None:
        """Emit ``checkpoint_saved`` for the epoch checkpoint written in the background once its file is complete on
        disk (``block``: wait for it), so the event never claims a checkpoint a kill at that moment would lose.
        Raises the write's ``OSError``."""
        if self._unannounced is None or (not block and self.store.writing()):
            return
        self.store.wait()
        epoch, step = self._unannounced
        self._unannounced = None
        self.reporter.event("checkpoint_saved", f"epoch {epoch} checkpoint written", {"epoch": epoch, "step": step})

    # ------------------------------------------------------------------ checkpoints, guards, progress
    def _state(self, epoch: int, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        state = {"version": PARTIAL_CHECKPOINT_VERSION if partial is not None else CHECKPOINT_VERSION,
                 "fingerprint": self.fingerprint, "epoch": epoch, "step": self.step,
                 "modules": {name: m.state_dict() for name, m in self.modules.items()},
                 "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                 "precision": self.precision.state_dict(), "elapsed_s": self._elapsed(), "loss_terms": self.final_terms}
        if partial is not None:
            state["partial"] = partial
        return state

    def _save_partial(self, ep: _Epoch, steps_done: int) -> None:
        """Write the hand-back checkpoint: ``steps_done`` steps of the epoch finished, the next one not started."""
        log_acc, preds = ep.log_acc, ep.preds
        if self.par is not None:  # the ranks' sums (rank 0 alone carries them on after a resume) and every rank's predictions
            log_acc = self.par.all_reduce(ep.log_acc.clone())
            preds = self.par.all_reduce(ep.preds.clone(), op="max") if ep.preds is not None else None
            if not self.par.is_main:
                return
        self._announce_checkpoint(block=True)  # the previous epoch's checkpoint first, so this newer one is the newest on disk
        partial = {"epoch": ep.number, "steps_done": steps_done, "rng": self.precision.rng_state(), "log_acc": log_acc,
                   "ep_acc": ep.ep_acc, "log_count": ep.log_count}
        if preds is not None:
            partial["preds"] = preds
        self.store.save(self._state(ep.number - 1, partial))
        self.reporter.event("checkpoint_saved", f"checkpoint at step {self.step} ({steps_done} of the {self.spe} steps of epoch "
                            f"{ep.number}) saved to hand the job back",
                            {"epoch": ep.number - 1, "step": self.step, "steps_done_in_epoch": steps_done})

    def _check_finite(self, values: list[float], epoch: int) -> None:
        if not all(math.isfinite(v) for v in values):
            shown = ", ".join(f"{k}={v:.4g}" for k, v in zip(self.names, values))
            amp = self.precision.amp_dtype is not None
            raise DistillError(
                "non_finite_loss",
                f"the loss became non-finite by step {self.step} (epoch {epoch}): {shown}; try a lower learning rate "
                f"(now {self.training.optimizer.lr:g}){', precision fp32' if amp else ''} or check the teacher's outputs",
                "training.optimizer.lr",
            )

    def _check_finite_weights(self, epoch: int) -> None:
        with torch.no_grad():
            ok = bool(torch.isfinite(torch.stack([p.detach().float().sum() for p in self.params])).all()) if self.params else True
            if self.par is not None:  # agreed, so every rank raises (or none does)
                ok = not bool(self.par.all_reduce(torch.tensor([0.0 if ok else 1.0], device=self.par.device), op="max")[0])
        if not ok:
            amp = self.precision.amp_dtype is not None
            raise DistillError("non_finite_loss", f"the student's weights became non-finite by step {self.step} (epoch {epoch}); try a "
                               f"lower learning rate (now {self.training.optimizer.lr:g}){' or precision fp32' if amp else ''}",
                               "training.optimizer.lr")

    def _progress(self, epoch: int) -> None:
        done = self.step - self.start_step
        eta = (time.perf_counter() - self.run_start) / done * (self.total_steps - self.step) if done > 0 else None
        self.reporter.progress(epoch=epoch, epochs=self.training.epochs, step=self.step, total_steps=self.total_steps,
                               fraction=self.step / self.total_steps, eta_s=eta)
