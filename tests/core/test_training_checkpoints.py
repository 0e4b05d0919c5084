"""Training checkpoints survive corruption (issue 15, item 5): the last two good ones are kept, a damaged file is
refused by its digest even when ``torch.load`` reads it, an unreadable newest checkpoint is reported as
``checkpoint_unreadable`` and resume falls back to the one before it; with none readable the job starts over, saying so."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from distill.errors import StopRequested
from distill.reporter import RecordingReporter
from distill.training import CheckpointStore, CheckpointUnreadable, read_checkpoint, save_checkpoint, steps_per_epoch

from .helpers import make_spec, run

SPE = steps_per_epoch(1437, 64)  # digits: 1,437 training rows after the 20% split


def _state(epoch: int, step: int, **extra) -> dict:
    return {"version": 1, "epoch": epoch, "step": step, "modules": {"student": {"w": torch.arange(6.0).reshape(2, 3) + step}},
            "loss_terms": {"kd": 0.5}, **extra}


def _flip_middle_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_store_keeps_the_two_newest_and_orders_a_hand_back_after_its_epoch(tmp_path):
    store = CheckpointStore(tmp_path, "checkpoint")
    for epoch in (1, 2, 3):
        store.submit(_state(epoch, epoch * 10))
    store.wait()
    assert [(f.epoch, f.step, f.partial) for f in store.files()] == [(3, 30, False), (2, 20, False)]
    store.save(_state(3, 30, partial={"epoch": 4, "steps_done": 0}))  # handed back before the first step of epoch 4
    files = store.files()
    assert [(f.epoch, f.step, f.partial) for f in files] == [(3, 30, True), (3, 30, False)]
    assert files[0].path.name == "checkpoint-epoch3-step30-partial.pt" and files[0].lost_epoch == 4
    assert read_checkpoint(files[0].path)["partial"]["epoch"] == 4
    assert CheckpointStore(tmp_path, "baseline_checkpoint").files() == []  # another pass's files are its own


def test_a_flipped_bit_that_torch_load_misses_is_caught_by_the_digest(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, _state(1, 10, big=torch.zeros(50_000)))
    _flip_middle_byte(path)  # inside the tensor data: torch.load reads the file without complaint
    assert torch.load(path, weights_only=True)["epoch"] == 1
    with pytest.raises(CheckpointUnreadable, match="digest"):
        read_checkpoint(path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointUnreadable, match="torch.load failed"):
        read_checkpoint(path)
    torch.save({"epoch": 1}, path)  # readable, but not written by save_checkpoint
    with pytest.raises(CheckpointUnreadable, match="no digest"):
        read_checkpoint(path)


def test_load_latest_reports_each_unreadable_file_and_falls_back(tmp_path):
    store = CheckpointStore(tmp_path, "checkpoint", keep=3)
    for epoch in (1, 2, 3):
        store.submit(_state(epoch, epoch * 10, big=torch.zeros(50_000)))  # the middle of the file is tensor data
    store.wait()
    newest = store.files()[0].path
    _flip_middle_byte(newest)
    rep = RecordingReporter()
    state = store.load_latest(rep)
    assert state["epoch"] == 2
    (ev,) = rep.events
    assert ev[0] == "checkpoint_unreadable"
    assert ev[2] == {"epoch": 3, "step": 30, "file": "checkpoint-epoch3-step30.pt", "reason": ev[2]["reason"],
                     "fallback_epoch": 2, "fallback_step": 20}
    assert "digest" in ev[2]["reason"] and "resuming from the checkpoint of epoch 2" in ev[1]
    assert not newest.exists() and (tmp_path / "checkpoint-epoch3-step30.pt.unreadable").exists()
    rep2 = RecordingReporter()
    assert store.load_latest(rep2)["epoch"] == 2 and rep2.events == []  # set aside: not reported twice


def test_a_killed_writer_leaves_no_file_that_is_read(tmp_path):
    store = CheckpointStore(tmp_path, "checkpoint")
    store.save(_state(1, 10))
    (tmp_path / "checkpoint-epoch2-step20.pt.tmp").write_bytes(b"half a checkpoint")
    assert [f.epoch for f in store.files()] == [1]
    store.clear_temporary()
    assert not (tmp_path / "checkpoint-epoch2-step20.pt.tmp").exists()


def _weights(result):
    return load_file(str(result.artifacts[0]))


def _spec():
    return make_spec(training={"epochs": 4, "optimizer": {"name": "sgd", "lr": 0.05}},
                     student={"architecture": {"name": "mlp", "kwargs": {"hidden_sizes": [32], "dropout": 0.1}}})


def _crash_in_epoch_4(teacher_file, workdir):
    crashed = RecordingReporter(stop_after_steps=1 + 3 * SPE + 5)  # after caching, 3 epochs, 5 steps into epoch 4
    with pytest.raises(StopRequested):
        run(_spec(), teacher_file, workdir, reporter=crashed)
    files = CheckpointStore(workdir, "checkpoint").files()
    assert [(f.epoch, f.partial) for f in files] == [(3, False), (2, False)]  # the last two good ones, no more
    return crashed, files


def test_corrupt_newest_checkpoint_is_reported_and_resume_falls_back_to_the_previous(teacher_file, tmp_path):
    straight, rs = run(_spec(), teacher_file, tmp_path / "straight")
    assert [f.epoch for f in CheckpointStore(tmp_path / "straight", "checkpoint").files()] == [4, 3]
    crashed, files = _crash_in_epoch_4(teacher_file, tmp_path / "w")
    _flip_middle_byte(files[0].path)
    again = RecordingReporter(rows=list(crashed.rows))
    resumed, rr = run(_spec(), teacher_file, tmp_path / "w", reporter=again)
    bad = [e for e in rr.events if e[0] == "checkpoint_unreadable"]
    assert len(bad) == 1 and bad[0][2]["epoch"] == 3 and bad[0][2]["fallback_epoch"] == 2
    assert "the checkpoint of epoch 3" in bad[0][1] and "resuming from the checkpoint of epoch 2" in bad[0][1]
    assert [e[2]["epoch"] for e in rr.events if e[0] == "resumed"] == [2]
    assert resumed.report["training"]["resumed_from_epoch"] == 2
    # epoch 3 trained again from epoch 2's state: the same history and weights as a run that never crashed
    assert rr.rows == rs.rows
    ws, wr = _weights(straight), _weights(resumed)
    assert all(torch.equal(ws[k], wr[k]) for k in ws)


def test_with_no_readable_checkpoint_the_job_starts_over_and_says_so(teacher_file, tmp_path):
    straight, rs = run(_spec(), teacher_file, tmp_path / "straight")
    crashed, files = _crash_in_epoch_4(teacher_file, tmp_path / "w")
    _flip_middle_byte(files[0].path)
    files[1].path.write_bytes(files[1].path.read_bytes()[:100])  # truncated
    again = RecordingReporter(rows=list(crashed.rows))
    resumed, rr = run(_spec(), teacher_file, tmp_path / "w", reporter=again)
    bad = [e for e in rr.events if e[0] == "checkpoint_unreadable"]
    assert [(e[2]["epoch"], e[2]["fallback_epoch"]) for e in bad] == [(3, None), (2, None)]
    assert all("training starts over from epoch 1" in e[1] for e in bad)
    assert "torch.load failed" in bad[1][2]["reason"]
    assert not [e for e in rr.events if e[0] == "resumed"] and resumed.report["training"]["resumed_from_epoch"] is None
    assert rr.rows == rs.rows  # the rows of the lost attempt were discarded
    ws, wr = _weights(straight), _weights(resumed)
    assert all(torch.equal(ws[k], wr[k]) for k in ws)


class _CheckingReporter(RecordingReporter):
    """Reads the announced checkpoint back the moment ``checkpoint_saved`` is emitted."""

    workdir = None

    def event(self, type, message, data=None):
        if type == "checkpoint_saved" and "steps_done_in_epoch" not in (data or {}):
            # any pass's file (the job's own, then the baseline's under its own stem) of that epoch and step
            match = sorted(self.workdir.rglob(f"*-epoch{data['epoch']}-step{data['step']}.pt"))
            assert match, f"checkpoint_saved for epoch {data['epoch']} emitted before its file exists"
            assert read_checkpoint(match[-1].path if hasattr(match[-1], "path") else match[-1])["step"] == data["step"]
        super().event(type, message, data)


def test_checkpoint_saved_is_emitted_only_once_the_file_is_complete(teacher_file, tmp_path):
    """The epoch checkpoints are written in a background thread; the event that announces one (which operators and the
    durability tests rely on: kill after it and resume from that epoch) comes only when the file reads back intact."""
    rep = _CheckingReporter()
    rep.workdir = tmp_path
    run(_spec(), teacher_file, tmp_path, reporter=rep)
    saved = [e[2]["epoch"] for e in rep.events if e[0] == "checkpoint_saved"]
    epochs = list(range(1, _spec().training.epochs + 1))
    assert saved[:len(epochs)] == epochs  # the job's own pass (a baseline pass, on by default, follows with its own)
