"""``stillhouse report`` and ``stillhouse compare`` on every stored report shape (the stored-report fixtures, including
task-less tensor reports of older versions), against a real API over HTTP (uvicorn on loopback in a thread, on the
test backend); and the client and CLI running in a process where torch cannot be imported."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from client import cli
from distill.report import parse_report
from tests.api.test_reports import STORED, _succeeded_job

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def http_url(backend):
    """Base URL of the API served by uvicorn in a thread on 127.0.0.1 (a free port) against ``backend``."""
    import uvicorn

    from app.main import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(auto_migrate=False), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=15)


@pytest.fixture
def stored_jobs(api, tmp_path):
    """Factory: ``await stored_jobs()`` puts every stored-report fixture on a succeeded job; returns {name: job id}."""

    async def make() -> dict[str, str]:
        return {name: await _succeeded_job(api, tmp_path, copy.deepcopy(r), [], name=name) for name, r in STORED.items()}

    return make


def _cli(url: str, *args: str) -> str:
    result = CliRunner().invoke(cli.app, ["--api", url, *args])
    assert result.exit_code == 0, result.output
    return result.output


async def test_cli_report_shows_every_stored_shape(http_url, stored_jobs, monkeypatch):
    monkeypatch.setattr(cli, "console", Console(width=250))
    ids = await stored_jobs()
    for name, job_id in ids.items():
        out = _cli(http_url, "report", job_id)
        r = parse_report(STORED[name])
        q = r.quality()
        assert f"compression report · {job_id}" in out, out
        assert q.label in out and f"{100 * q.student:.2f}%" in out and f"{100 * q.teacher:.2f}%" in out, out
        assert f"{r.parameter_ratio:,.2f}×" in out and f"{r.teacher.parameters:,}" in out and f"{r.student.parameters:,}" in out
        assert "wall time · total" in out and r.summary[:60] in " ".join(out.split())
        if r.task == "sentence_embedding":
            assert "mean cosine to teacher" in out and f"{r.mean_cosine:,.4g}" in out
        elif r.task == "sequence_classification":
            assert "agreement with teacher" in out and f"{100 * r.agreement:.2f}%" in out
        elif r.task == "causal_lm":
            assert f"{r.perplexity.student.perplexity:,.3f}" in out and "student alone" in out and "decode tokens/s" in out
            assert "held-out prompts" in out and r.generations.examples[0].prompt in out
        else:
            assert f"{100 * r.agreement:.2f}%" in out and "latency p50/p95 @ batch 16" in out
    full = _cli(http_url, "report", ids["classification_full"])
    assert "int8 student (student_int8.pt)" in full and "pruned student (student_pruned.safetensors)" in full
    assert "student trained alone" in full and "distillation gain" in full and "-3.89 points" in full
    assert "no labelled training rows" in _cli(http_url, "report", ids["classification_unlabelled"])
    bars, r = _cli(http_url, "report", ids["classification_error_bars"]), parse_report(STORED["classification_error_bars"])
    low, high = r.student.val_top1_interval
    vs = r.comparisons["distilled_vs_alone"]
    assert "95% interval (Wilson)" in bars and f"[{100 * low:.2f}%, {100 * high:.2f}%]" in bars
    assert (f"distilled student − student alone {vs.difference_points:+.2f} points, 95% [{vs.interval_points[0]:+.2f}, "
            f"{vs.interval_points[1]:+.2f}], McNemar p = {vs.mcnemar_p:.2g}: no measurable difference") in " ".join(bars.split())
    assert "warning small_validation: the validation split has 90 labelled rows" in " ".join(bars.split())
    assert "warning few_validation_rows_per_class" in bars and "No measurable difference" in " ".join(bars.split())
    text, r = " ".join(_cli(http_url, "report", ids["sequence_classification_error_bars"]).split()), \
        parse_report(STORED["sequence_classification_error_bars"])
    ts, (low, high) = r.comparisons["teacher_vs_student"], r.student_top1_interval
    assert "95% interval (Wilson)" in text and f"[{100 * low:.2f}%, {100 * high:.2f}%]" in text
    assert (f"teacher − distilled student {ts.difference_points:+.2f} points, 95% [{ts.interval_points[0]:+.2f}, "
            f"{ts.interval_points[1]:+.2f}], McNemar p = {ts.mcnemar_p:.2g}") in text
    b = r.baseline
    assert (f"student trained alone top-1 {100 * b.val_top1:.2f}% [{100 * b.val_top1_interval[0]:.2f}%, "
            f"{100 * b.val_top1_interval[1]:.2f}%]") in text and "distilled student − student alone" in text
    chosen, r = " ".join(_cli(http_url, "report", ids["classification_auto"]).split()), parse_report(STORED["classification_auto"])
    assert f"method auto chose {r.selection.chosen}" in chosen and "candidates (selection top-1)" in chosen
    assert r.selection.student_alone and "distilled student" not in chosen  # trained alone: never called distilled
    assert "teacher − returned student (trained alone)" in chosen
    assert all(c.name in chosen for c in r.selection.candidates) and "selection cost" in chosen
    assert f"selection split {r.selection.selection_rows:,} labelled training rows; candidates trained on" in chosen
    raw = json.loads(_cli(http_url, "report", ids["classification_early"], "--json"))
    assert raw["task"] == "classification" and raw["job_id"] == ids["classification_early"] and raw["cache"] is None


async def test_cli_compare_shows_every_stored_shape(http_url, stored_jobs, monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "console", Console(width=250))
    ids = await stored_jobs()
    out = _cli(http_url, "compare", *ids.values(), "--html", str(tmp_path / "c.html"))
    lines = {job_id: next(line for line in out.splitlines() if job_id in line) for job_id in ids.values()}
    for name, job_id in ids.items():
        r = parse_report(STORED[name])
        q = r.quality()
        assert r.task in lines[job_id] and q.label in lines[job_id] and f"{100 * q.student:.2f}%" in lines[job_id]
    assert "-3.89" in lines[ids["classification_full"]]
    assert f"{len(ids)} reports side by side" in (tmp_path / "c.html").read_text()


async def test_client_and_cli_need_no_torch(http_url, stored_jobs):
    """The typed client and the CLI in a process where importing torch fails: a report of each task and the comparison."""
    ids = await stored_jobs()
    chosen = [ids["classification_full"], ids["sequence_classification"], ids["sentence_embedding"]]
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'torch':
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from client import Stillhouse
from client.cli import app
with Stillhouse({http_url!r}) as c:
    print('TASKS', [c.report(j).task for j in {chosen!r}])
for args in (['report', {chosen[2]!r}], ['compare', *{chosen!r}]):
    try:
        app(['--api', {http_url!r}, *args])
    except SystemExit as e:
        assert e.code in (0, None), e.code
print('TORCH', 'torch' in sys.modules)
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "250"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "TASKS ['classification', 'sequence_classification', 'sentence_embedding']" in res.stdout
    assert "TORCH False" in res.stdout and "linear-probe accuracy" in res.stdout
    assert all(j in res.stdout for j in chosen)


def test_client_refuses_a_report_it_cannot_read_with_a_clear_error():
    """A report of a task family this client does not know (a newer server): ApiError unsupported_report naming it."""
    import httpx

    from client import ApiError, Stillhouse

    newer = {**STORED["sentence_embedding"], "task": "speech_recognition", "job_id": "job_new"}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=newer if "jobs" in request.url.path else {"data": [newer]}))
    with Stillhouse("http://stillhouse.test", transport=transport) as c:
        for call in (lambda: c.report("job_new"), lambda: c.compare(["job_new"])):
            with pytest.raises(ApiError) as e:
                call()
            assert e.value.code == "unsupported_report" and "'speech_recognition'" in e.value.message and "job_new" in e.value.message
