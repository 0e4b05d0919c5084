"""The causal-LM adapter of the one trainer (``distill.training.Trainer``): batches of token rows, the student's
next-token logits at the target positions, the teacher's from the top-k cache or a live no-grad pass, the loss
through the job's method (``distill.lm.methods``), and a per-epoch validation (perplexity and next-token top-1
agreement with the teacher).

Batches: an epoch's rows are shuffled with its seed in pools of 50 batches, length-sorted inside a pool and
batched, the batch order shuffled again (``data.batches``); each batch is right-padded to its longest row
(``data.collate``). Only target positions (``losses.targets``: completion tokens with prompts, every real token for
plain text) enter the loss, so padding and prompts are masked out.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..training import TaskAdapter
from .cache import TopKCache, teacher_target_logits
from .data import Rows, batches, collate
from .losses import target_logits, targets
from .methods import LMMethod

EVAL_BATCH = 8  # validation rows per no-grad forward pass


class CausalLM(TaskAdapter):
    """A decoder-only ``student`` learns from ``teacher`` through ``method`` on training ``rows``.

    ``cache``: the teacher's top-k distributions of every training target token (``TopKCache``), or None to run
    the teacher at every step (or not at all, for methods without a teacher term). ``val_rows`` and
    ``teacher_val_top1`` (the teacher's most likely next token per validation target token, ``[Nv_tokens]`` int64 in
    row order, or None) give the per-epoch rows ``('perplexity' | 'nll' | 'agreement', 'val', value)``."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None, method: LMMethod, rows: Rows, pad_id: int, val_rows: Rows,
                 device: torch.device, cache: TopKCache | None = None, teacher_val_top1: torch.Tensor | None = None) -> None:
        self.student, self.teacher, self.method, self.rows, self.pad_id = student, teacher, method, rows, int(pad_id)
        self.val_rows, self.device, self.cache = val_rows, device, cache
        self.teacher_val_top1 = teacher_val_top1
        self.term_names = list(method.term_names)
        self.lengths = rows.lengths
        self.forward_module: nn.Module = student  # the student's training forward: itself, or its DDP wrapper

    def modules(self) -> dict[str, nn.Module]:
        """``{'student': model}`` (the methods have no learned parts)."""
        return {"student": self.student}

    def steps_per_epoch(self, batch_size: int) -> int:
        """``ceil(rows / batch_size)``."""
        return -(-len(self.rows) // batch_size)

    def epoch_plan(self, seed: int, batch_size: int) -> list[torch.Tensor]:
        """The epoch's length-bucketed row batches (``data.batches``) as CPU index tensors."""
        return [torch.as_tensor(b, dtype=torch.int64) for b in batches(self.rows, batch_size, seed)]

    def make_batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(index, input_ids, attention_mask, target_mask)``, each ``[B, T]`` int64 on the device but ``index``."""
        ids, att, tgt = collate(self.rows, index.numpy(), self.pad_id, self.device)
        return index, ids, att, tgt

    def teacher_forward(self, batch: Any) -> Any:
        """The teacher's view of the batch's target tokens: the cache's ``TopK`` ``[M, k]``, or its logits ``[M, V]``
        from a no-grad pass; None for a method without a teacher term."""
        if not self.method.needs_teacher:
            return None
        if self.cache is not None:
            return self.cache.for_rows(batch[0].numpy(), self.device)
        return teacher_target_logits(self.teacher, batch[1], batch[2], batch[3]).clone()  # a normal tensor (not an inference tensor) for the loss's autograd graph

    def student_forward(self, batch: Any) -> dict[str, torch.Tensor]:
        """``{'logits': [M, V], 'targets': [M]}``: the student's logits at the target positions and the tokens they predict."""
        if self.forward_module is self.student:  # the output layer on the target positions only (losses.target_logits)
            s_sel, y = target_logits(self.student, batch[1], batch[2], batch[3])
        else:  # through the DistributedDataParallel wrapper's own forward
            logits = self.forward_module(input_ids=batch[1], attention_mask=batch[2], use_cache=False).logits
            s_sel, y = targets(logits, batch[1], batch[3])
        return {"logits": s_sel, "targets": y}

    def loss_count(self, batch: Any) -> int:
        """The batch's target tokens ``M`` (the methods' terms are means over them): ``target_mask[:, 1:].sum()``."""
        return int(batch[3][:, 1:].sum())

    def wrap_student(self, module: nn.Module) -> None:
        """Train through ``module`` (the student's ``DistributedDataParallel`` wrapper); evaluation keeps the student."""
        self.forward_module = module

    def loss_terms(self, student_out: Any, teacher_out: Any, batch: Any, epoch: int) -> dict[str, torch.Tensor]:
        """The method's weighted terms (``LMMethod.forward``)."""
        return self.method(student_out["logits"], teacher_out, student_out["targets"])

    @torch.inference_mode()
    def evaluate(self, epoch: int) -> list[tuple[str, str, float]]:
        """Validation perplexity (``exp`` of the mean next-token NLL over target tokens), the NLL (nats per token) and,
        with the teacher's top-1, the fraction of target tokens where the student's most likely token is the teacher's."""
        self.student.eval()
        nll, count, agree = 0.0, 0, 0
        pos = 0
        for start in range(0, len(self.val_rows), EVAL_BATCH):
            index = list(range(start, min(start + EVAL_BATCH, len(self.val_rows))))
            ids, att, tgt = collate(self.val_rows, index, self.pad_id, self.device)
            s_sel, y = target_logits(self.student, ids, att, tgt)
            s_sel = s_sel.float()
            nll += float(F.cross_entropy(s_sel, y, reduction="sum"))
            m = int(y.shape[0])
            if self.teacher_val_top1 is not None:
                agree += int((s_sel.argmax(-1).cpu() == self.teacher_val_top1[pos:pos + m]).sum())
            pos += m
            count += m
        self.student.train()
        if count == 0:
            return []
        rows = [("perplexity", "val", math.exp(nll / count)), ("nll", "val", nll / count)]
        if self.teacher_val_top1 is not None:
            rows.append(("agreement", "val", agree / count))
        return rows


__all__ = ["CausalLM"]
