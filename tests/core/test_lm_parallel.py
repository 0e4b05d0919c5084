"""``training.devices: 2`` on the CPU (gloo, 2 processes) for causal-LM jobs on the tiny Llama the tests make: the
loss curve is one process's with the same global batch, a hand-back checkpoint resumes under 2 processes, a cancel
ends the job at the next step, a helper rank that dies fails the job with ``training_process_failed``, and the spec
is refused where the worker or the task cannot run it."""

from __future__ import annotations

import os
from pathlib import Path
import signal
import time

import psutil
import pytest
import torch

from distill.errors import DistillError, StopRequested
from distill.jobrun import JobRun
from distill.lm.job import run_lm_job
from distill.report import parse_report
from distill.reporter import RecordingReporter
from distill.training.parallel import check_devices, usable_cores
from tests.core.test_lm_job import lm_spec, text_file  # noqa: F401 - the module fixture is used here too

two_cores = pytest.mark.skipif(usable_cores() < 2, reason="2 processes need 2 usable cores")
# the job tests are slow: each starts a second interpreter (torch + transformers imports take seconds)

TOL = 1e-5  # largest |loss(2 processes) - loss(1 process)| per logged step, nats: float rounding of the split sums


def _train_losses(rep: RecordingReporter, split: str = "train") -> dict[int, float]:
    return {m.step: m.value for m in rep.rows if m.name == "loss/total" and m.split == split}


def _helpers() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "distill.lm.parallel" in " ".join(p.cmdline())]


def _spec(devices: int, **over):
    training = {"epochs": 2, "batch_size": 5, "log_every_steps": 1, "devices": devices, **over.pop("training", {})}
    return lm_spec(training=training, **over)


@pytest.fixture(scope="module")
def runs(tiny_llama_dir, text_file, tmp_path_factory):  # noqa: F811
    """The same job (with the baseline pass) in 1 and in 2 processes."""
    out = {}
    for n in (1, 2):
        rep = RecordingReporter()
        wd = tmp_path_factory.mktemp(f"devices{n}")
        t0 = time.perf_counter()
        res = run_lm_job(_spec(n, evaluation={"compare_baseline": True}), tiny_llama_dir, "hf", 1000, {"file_d": text_file}, wd, rep)
        out[n] = (res, rep, wd, time.perf_counter() - t0)
    return out


@pytest.mark.slow
@two_cores
def test_two_processes_follow_the_one_process_loss_curve(runs):
    one, two = _train_losses(runs[1][1]), _train_losses(runs[2][1])
    # global batches of 5 rows: 2 on rank 1, 3 on rank 0, of different lengths and target counts
    assert sorted(one) == sorted(two) and len(one) >= 8
    diff = max(abs(one[s] - two[s]) for s in one)
    print(f"largest |loss difference| over {len(one)} steps: {diff:.2e} nats; walls 1 process {runs[1][3]:.1f} s, 2 processes "
          f"{runs[2][3]:.1f} s")
    assert diff < TOL
    b1, b2 = _train_losses(runs[1][1], "baseline_train"), _train_losses(runs[2][1], "baseline_train")
    assert sorted(b1) == sorted(b2) and max(abs(b1[s] - b2[s]) for s in b1) < TOL
    r1, r2 = parse_report(runs[1][0].report), parse_report(runs[2][0].report)
    assert r1.training.devices == 1 and r2.training.devices == 2
    assert r2.perplexity.student.perplexity == pytest.approx(r1.perplexity.student.perplexity, rel=1e-4)
    assert r2.perplexity.alone.perplexity == pytest.approx(r1.perplexity.alone.perplexity, rel=1e-4)
    # rank 0 alone writes metrics (no duplicate rows) and checkpoints; the helper logged nothing alarming
    assert len(runs[2][1].rows) == len(runs[1][1].rows)
    assert sorted(p.name for p in runs[2][2].glob("checkpoint-*.pt")) == sorted(p.name for p in runs[1][2].glob("checkpoint-*.pt"))
    assert "Traceback" not in (runs[2][2] / "parallel-rank1.log").read_text()
    assert _helpers() == []


def _curves_match(teacher: Path, data, workdir: Path, **over) -> None:
    """The job with ``over`` in 1 and in 2 processes logs the same steps with losses within ``TOL``."""
    curves = {}
    for n in (1, 2):
        rep = RecordingReporter()
        run_lm_job(_spec(n, **over), teacher, "hf", 1000, {"file_d": data}, workdir / str(n), rep)
        curves[n] = _train_losses(rep)
    assert sorted(curves[1]) == sorted(curves[2]) and max(abs(curves[1][s] - curves[2][s]) for s in curves[1]) < TOL


@pytest.mark.slow
@two_cores
def test_with_the_teacher_run_every_step_each_rank_loads_it_and_the_curve_still_matches(tiny_llama_dir, text_file, tmp_path):  # noqa: F811
    _curves_match(tiny_llama_dir, text_file, tmp_path, training={"epochs": 1}, cache={"teacher_outputs": "off"})
    assert not (tmp_path / "2" / "lm_teacher_topk.safetensors").exists()  # no cache: the helper ran its own teacher


class _StopAtStep(RecordingReporter):
    """Asks to stop (or, with ``hand_back``, to hand back) once rank 0 has reported progress at step ``at`` (the count of
    ``should_stop`` calls would also count the polls while the helper starts); ``kill`` instead SIGKILLs the helper
    rank there and never asks to stop."""

    def __init__(self, at: int, hand_back: bool = False, kill: bool = False) -> None:
        super().__init__(hand_back=hand_back)
        self.at, self.kill, self.killed = at, kill, False

    def _reached(self) -> bool:
        return any(c["step"] >= self.at for c in self.progress_calls)  # progress comes every step at these sizes

    def should_stop(self) -> bool:
        if not self._reached():
            return False
        if self.kill:
            if not self.killed:
                for p in _helpers():
                    os.kill(p.pid, signal.SIGKILL)  # not reaped here: the job's Popen must see how it ended
                self.killed = True
            return False
        return True


@pytest.mark.slow
@two_cores
def test_hand_back_under_two_processes_resumes_and_ends_like_the_straight_run(tiny_llama_dir, text_file, tmp_path, runs):  # noqa: F811
    """Logged every 3 steps, so the hand-back checkpoint carries loss sums of steps not yet logged (the ranks' sums,
    carried on by rank 0 alone after the resume)."""
    over = {"evaluation": {"compare_baseline": True}, "training": {"log_every_steps": 3}}
    at = parse_report(runs[2][0].report).training.steps_per_epoch + 2  # within epoch 2 of the distilled pass
    assert at % 3  # not a log point: the partial checkpoint holds unlogged sums
    with pytest.raises(StopRequested):
        run_lm_job(_spec(2, **over), tiny_llama_dir, "hf", 1000, {"file_d": text_file}, tmp_path / "w", _StopAtStep(at, hand_back=True))
    assert [p.name for p in (tmp_path / "w").glob("checkpoint-*-partial.pt")] == [f"checkpoint-epoch1-step{at}-partial.pt"]
    assert _helpers() == []
    rep = RecordingReporter()
    res = run_lm_job(_spec(2, **over), tiny_llama_dir, "hf", 1000, {"file_d": text_file}, tmp_path / "w", rep)
    assert any(e[0] == "resumed" and f"within epoch 2 at step {at}" in e[1] for e in rep.events)
    straight = RecordingReporter()  # one process, straight through, same logging
    ref = run_lm_job(_spec(1, **over), tiny_llama_dir, "hf", 1000, {"file_d": text_file}, tmp_path / "one", straight)
    after = {k: v for k, v in _train_losses(straight).items() if k > at}
    assert min(_train_losses(rep)) > at and _train_losses(rep) == pytest.approx(after, abs=TOL)
    epochs = {m.epoch: m.value for m in rep.rows if m.name == "loss/total" and m.split == "train_epoch"}
    ref_epochs = {m.epoch: m.value for m in straight.rows if m.name == "loss/total" and m.split == "train_epoch"}
    assert epochs == pytest.approx({e: v for e, v in ref_epochs.items() if e >= 2}, abs=TOL)
    assert parse_report(res.report).training.final_loss_terms == pytest.approx(parse_report(ref.report).training.final_loss_terms, abs=TOL)


@pytest.mark.slow
@two_cores
def test_a_global_batch_smaller_than_the_world_trains_like_one_process(tiny_llama_dir, text_file, tmp_path):  # noqa: F811
    """batch_size 1: rank 1 has no row in any batch; it runs a stand-in row at weight 0 so DDP's collectives still meet."""
    _curves_match(tiny_llama_dir, text_file, tmp_path, training={"epochs": 1, "batch_size": 1})


@pytest.mark.slow
@two_cores
def test_a_killed_job_process_leaves_no_helper_behind(tiny_llama_dir, text_file, tmp_path):  # noqa: F811
    """SIGKILL of rank 0 (a worker killed mid-training): the helper gets its parent-death signal."""
    import subprocess
    import sys

    (tmp_path / "spec.json").write_text(_spec(2, training={"epochs": 10_000}).model_dump_json())
    script = tmp_path / "job.py"
    script.write_text(f"""
from pathlib import Path
from distill.formats import FileInput
from distill.lm.job import run_lm_job
from distill.reporter import RecordingReporter
from distill.spec import JobSpec
spec = JobSpec.model_validate_json(Path({str(tmp_path / "spec.json")!r}).read_text())
run_lm_job(spec, Path({str(tiny_llama_dir)!r}), "hf", 1000, {{"file_d": FileInput(Path({str(text_file.path)!r}), "jsonl", 1)}},
           Path({str(tmp_path / "w")!r}), RecordingReporter())
""")
    job = subprocess.Popen([sys.executable, str(script)], cwd=Path(__file__).resolve().parents[2],
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "w").glob("checkpoint-*.pt")):  # training under way on both ranks
            assert job.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        helpers = [p for p in psutil.Process(job.pid).children() if "distill.lm.parallel" in " ".join(p.cmdline())]
        assert len(helpers) == 1
        job.kill()
        job.wait()
        gone, alive = psutil.wait_procs(helpers, timeout=10)
        assert alive == [] and gone
    finally:
        job.kill()


@pytest.mark.slow
@two_cores
def test_cancel_under_two_processes_ends_at_the_next_step(tiny_llama_dir, text_file, tmp_path):  # noqa: F811
    rep = _StopAtStep(3)
    t0 = time.perf_counter()
    with pytest.raises(StopRequested):
        run_lm_job(_spec(2, training={"epochs": 50}), tiny_llama_dir, "hf", 1000, {"file_d": text_file}, tmp_path, rep)
    assert time.perf_counter() - t0 < 60
    assert max(_train_losses(rep)) == 3  # asked after step 3: step 4 never ran
    assert _helpers() == [] and not (tmp_path / "artifacts").exists()
    assert "stopped with the group" in (tmp_path / "parallel-rank1.log").read_text()


@pytest.mark.slow
@two_cores
def test_a_rank_that_dies_fails_the_job_with_a_clear_error(tiny_llama_dir, text_file, tmp_path):  # noqa: F811
    rep = _StopAtStep(3, kill=True)
    t0 = time.perf_counter()
    with pytest.raises(DistillError) as e:
        run_lm_job(_spec(2, training={"epochs": 50}), tiny_llama_dir, "hf", 1000, {"file_d": text_file}, tmp_path, rep)
    assert rep.killed and e.value.code == "training_process_failed"
    assert "training process 1 of 2 ended during training (killed by SIGKILL)" in e.value.message
    assert time.perf_counter() - t0 < 60 and _helpers() == []


@pytest.mark.slow
@two_cores
def test_the_runtime_limit_under_two_processes_ends_every_rank_at_the_same_step(tiny_llama_dir, text_file, tmp_path):  # noqa: F811
    rep = RecordingReporter()
    with pytest.raises(DistillError) as e:
        run_lm_job(_spec(2, training={"epochs": 10_000, "max_runtime_s": 20}), tiny_llama_dir, "hf", 1000, {"file_d": text_file},
                   tmp_path, rep)
    assert e.value.code == "max_runtime_exceeded" and "reached at step" in e.value.message  # the trainer's agreed check
    assert max(_train_losses(rep)) >= 1 and _helpers() == []
    assert "stopped with the group: max_runtime_exceeded" in (tmp_path / "parallel-rank1.log").read_text()


@two_cores
def test_devices_beyond_the_worker_are_refused(tmp_path):
    with pytest.raises(DistillError) as e:
        check_devices(usable_cores() + 1, torch.device("cpu"))
    assert e.value.code == "invalid_spec" and e.value.param == "training.devices" and "usable core" in e.value.message
    if torch.cuda.device_count() < 2:
        with pytest.raises(DistillError) as e:
            check_devices(2, torch.device("cuda"))
        assert e.value.param == "training.devices" and "CUDA devices" in e.value.message
    check_devices(1, torch.device("cpu"))
    check_devices(2, torch.device("cpu"))
    # more processes than cores: the job fails before it loads anything
    with pytest.raises(DistillError) as e:
        run_lm_job(_spec(usable_cores() + 1), tmp_path / "no-teacher", "hf", 1000, {}, tmp_path / "w", RecordingReporter())
    assert e.value.code == "invalid_spec" and e.value.param == "training.devices"
    # a driver that trains in one process refuses devices > 1 before anything runs
    with pytest.raises(DistillError) as e:
        JobRun.start(_spec(2), tmp_path, RecordingReporter(), 0.0)
    assert e.value.param == "training.devices" and "causal_lm only" in e.value.message


def test_devices_field_bounds():
    from pydantic import ValidationError

    assert lm_spec().training.devices == 1
    with pytest.raises(ValidationError, match="devices"):
        _spec(0)
