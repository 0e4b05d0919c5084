"""The ``stillhouse`` command line (typer + rich), built on ``client.api.Stillhouse``.

    stillhouse upload teacher.safetensors --purpose teacher
    stillhouse submit spec.yaml            # file paths in the spec are uploaded for you
    stillhouse wait JOB_ID                 # live progress bar
    stillhouse report JOB_ID
    stillhouse download JOB_ID --dir out/

The API address comes from ``--api`` or ``STILLHOUSE_API_URL`` (default http://127.0.0.1:8000), the API key
(when the server requires one) from ``--api-key`` or ``STILLHOUSE_API_KEY``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from client.api import ApiError, Job, Stillhouse
from distill.report import (
    AnyReport,
    ClassificationReport,
    LatencyMs,
    ReportBase,
    SentenceEmbeddingReport,
    SequenceClassificationReport,
    TextReportBase,
)

app = typer.Typer(help="Knowledge-distillation jobs on a stillhouse server.", no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True)

# spec locations that may hold {"path": ...} instead of {"file_id": ...}, with the purpose to upload as
PATH_FIELDS = (("teacher",), "teacher"), (("data", "train"), "dataset"), (("data", "validation"), "dataset"), (("data", "transfer"), "dataset")


class _State:
    api_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None


def _client() -> Stillhouse:
    return Stillhouse(_State.api_url, api_key=_State.api_key or "")


def _fail(e: ApiError) -> None:
    err.print(f"[bold red]error[/] [red]{e.code}[/]: {e.message}" + (f" [dim](param: {e.param})[/]" if e.param else ""))
    raise typer.Exit(2)


@app.callback()
def main(api: str = typer.Option("http://127.0.0.1:8000", "--api", envvar="STILLHOUSE_API_URL", help="Base URL of the API."),
         api_key: Optional[str] = typer.Option(None, "--api-key", envvar="STILLHOUSE_API_KEY", show_default=False,
                                               help="API key (sh_…), sent as 'Authorization: Bearer'; not needed on a "
                                                    "loopback server with authentication off.")) -> None:
    """Talk to the stillhouse API at --api (with --api-key when it requires keys)."""
    _State.api_url = api
    _State.api_key = api_key


@app.command()
def upload(path: Path = typer.Argument(..., exists=True, dir_okay=False, help="File to upload."),
           purpose: str = typer.Option("teacher", help="teacher | dataset | student_init"),
           as_json: bool = typer.Option(False, "--json", help="Print the file object as JSON.")) -> None:
    """Upload a model or dataset; prints its file id."""
    try:
        f = _client().upload(path, purpose)
    except ApiError as e:
        _fail(e)
    if as_json:
        print(f.model_dump_json(indent=2))
        return
    extra = f", {f.parameters:,} parameters" if f.parameters else ""
    console.print(f"[green]{f.id}[/] {f.filename}: {f.format}, {f.bytes:,} bytes{extra}", highlight=False)
    print(f.id)


def load_spec(path: Path) -> dict[str, Any]:
    """Read a JSON or YAML job spec. Raises typer.BadParameter for unreadable files."""
    try:
        text = path.read_text()
        spec = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise typer.BadParameter(f"cannot read spec {path}: {e}") from e
    if not isinstance(spec, dict):
        raise typer.BadParameter(f"spec {path} must be a mapping")
    return spec


def upload_spec_paths(client: Stillhouse, spec: dict[str, Any], base: Path, say=lambda m: None) -> dict[str, Any]:
    """Replace each ``path: FILE`` at teacher / data.train / data.validation / data.transfer by the
    ``file_id`` of its upload (paths relative to ``base``). Returns the spec (modified in place)."""
    for keys, purpose in PATH_FIELDS:
        node: Any = spec
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and "path" in node:
            p = Path(node.pop("path"))
            p = p if p.is_absolute() else base / p
            if not p.is_file():
                raise typer.BadParameter(f"{'.'.join(keys)}.path: no file {p}")
            f = client.upload(p, purpose)
            node["file_id"] = f.id
            say(f"uploaded {p} -> {f.id} ({f.format}, {f.bytes:,} bytes)")
    return spec


@app.command()
def submit(spec_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Job spec, JSON or YAML."),
           wait_: bool = typer.Option(False, "--wait", help="Follow the job until it ends."),
           as_json: bool = typer.Option(False, "--json", help="Print the job object as JSON.")) -> None:
    """Create a job from a spec; local file paths in it (``path:``) are uploaded first. Prints the job id."""
    client = _client()
    try:
        spec = upload_spec_paths(client, load_spec(spec_path), spec_path.parent, lambda m: err.print(m, highlight=False))
        job = client.create_job(spec)
    except ApiError as e:
        _fail(e)
    if as_json:
        print(job.model_dump_json(indent=2))
    else:
        err.print(f"job [green]{job.id}[/] {job.status}", highlight=False)
        print(job.id)
    if wait_:
        _follow(client, job.id)


@app.command()
def status(job_id: str, as_json: bool = typer.Option(False, "--json", help="Print the job object as JSON.")) -> None:
    """Show a job's status, phase, progress and error."""
    try:
        job = _client().get_job(job_id)
    except ApiError as e:
        _fail(e)
    if as_json:
        print(job.model_dump_json(indent=2))
        return
    t = Table(show_header=False, box=None)
    p = job.progress
    for k, v in (("job", job.id), ("name", job.name), ("status", job.status), ("phase", job.phase),
                 ("epoch", f"{p.epoch}/{p.epochs}" if p.epoch else None),
                 ("step", f"{p.step}/{p.total_steps}" if p.step else None),
                 ("progress", f"{100 * p.fraction:.1f}%" if p.fraction is not None else None),
                 ("eta", f"{p.eta_s:.0f} s" if p.eta_s is not None and not job.done else None),
                 ("attempt", job.attempt), ("queue", job.queue),
                 ("waiting", job.waiting["message"] if job.waiting else None),
                 ("error", f"{job.error.code}: {job.error.message}" if job.error else None),
                 *((f"registry ({name})", _registry_line(r)) for name, r in (job.registry or {}).items())):
        if v is not None:
            t.add_row(k, str(v))
    console.print(t)


def _registry_line(r: dict) -> str:
    if r.get("status") == "registered":
        return f"{r.get('model_name')} version {r.get('version')}" + (f" (alias {r['alias']})" if r.get("alias") else "") + f", run {r.get('run_id')}"
    return f"{r.get('status')}" + (f": {r['error']}" if r.get("error") else "")


@app.command(name="jobs")
def list_jobs(status_: Optional[str] = typer.Option(None, "--status", help="Only this status."),
              limit: int = typer.Option(20, help="How many.")) -> None:
    """List recent jobs."""
    try:
        jobs = _client().list_jobs(status_, limit)
    except ApiError as e:
        _fail(e)
    t = Table("id", "name", "status", "progress", "created")
    for j in jobs:
        t.add_row(j.id, j.name or "", j.status, f"{100 * (j.progress.fraction or 0):.0f}%", j.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    console.print(t)


@app.command()
def cancel(job_id: str) -> None:
    """Cancel a queued or running job."""
    try:
        job = _client().cancel(job_id)
    except ApiError as e:
        _fail(e)
    console.print(f"{job.id}: {job.status}")


def _follow(client: Stillhouse, job_id: str) -> Job:
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=err, transient=False) as bar:
        task = bar.add_task(job_id, total=None, info="queued")

        def show(job: Job) -> None:
            p = job.progress
            info = job.status if job.status != "running" else (job.phase or "running")
            if p.epoch:
                info += f" · epoch {p.epoch}/{p.epochs}"
            if p.eta_s is not None and job.status == "running" and job.phase == "training":
                info += f" · eta {p.eta_s:.0f}s"
            bar.update(task, total=p.total_steps, completed=p.step or 0, info=info)

        try:
            job = client.wait(job_id, poll_s=0.5, on_update=show)
        except ApiError as e:
            _fail(e)
    if job.status == "succeeded":
        err.print(f"[green]{job.id} succeeded[/] in {job.timings.get('running_s') or 0:.1f} s", highlight=False)
    else:
        msg = f": {job.error.code}: {job.error.message}" if job.error else ""
        err.print(f"[red]{job.id} {job.status}[/]{msg}", highlight=False)
        raise typer.Exit(1)
    return job


@app.command()
def wait(job_id: str) -> None:
    """Follow a job with a live progress bar until it ends (exit 1 if it failed or was cancelled)."""
    _follow(_client(), job_id)


@app.command()
def download(job_id: str, dir: Path = typer.Option(Path("."), "--dir", help="Where to write the files."),
             name: Optional[list[str]] = typer.Option(None, "--name", help="Only these artifacts (repeatable).")) -> None:
    """Download a job's artifacts (student.safetensors, student.json, student.onnx), checking each sha256."""
    client = _client()
    try:
        arts = client.artifacts(job_id)
        wanted = [a for a in arts if not name or a.name in name]
        if not wanted:
            raise ApiError(404, "not_found", f"job {job_id} has no artifacts" + (f" named {', '.join(name)}" if name else "") + " (has it succeeded?)")
        for a in wanted:
            out = client.download(job_id, a.name, dir)
            console.print(f"{out}  {a.bytes:,} bytes  sha256 {a.sha256[:16]}…", highlight=False)
    except ApiError as e:
        _fail(e)


def _fmt(v: Any, kind: str = "") -> str:
    if v is None:
        return "–"
    if kind == "pct":
        return f"{100 * v:.2f}%"
    if kind == "bytes":
        return f"{v / 1024:,.1f} KiB" if v < 1024**2 else f"{v / 1024**2:,.2f} MiB"
    if kind == "x":
        return f"{v:,.2f}×"
    if isinstance(v, float):
        return f"{v:,.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _latency(lat: LatencyMs | None) -> str:
    return f"{_fmt(lat.p50 if lat else None)} / {_fmt(lat.p95 if lat else None)} ms"


def render_text_report(r: TextReportBase) -> None:
    """Print the report of a text job (sentence_embedding or sequence_classification)."""
    t, s = r.teacher, r.student
    q = r.quality()
    tab = Table(title=f"compression report · {r.job_id or ''} · {r.task}", title_justify="left")
    tab.add_column("")
    tab.add_column("teacher", justify="right")
    tab.add_column("student", justify="right")
    tab.add_row("layers", _fmt(t.layers), _fmt(s.layers))
    tab.add_row("parameters", _fmt(t.parameters), _fmt(s.parameters))
    tab.add_row("bytes", _fmt(t.bytes, "bytes"), _fmt(s.bytes, "bytes"))
    tab.add_row(q.label, _fmt(q.teacher, "pct"), _fmt(q.student, "pct"))
    tab.add_row("latency p50/p95 per sentence", _latency(t.latency_ms.get("1")), _latency(s.latency_ms.get("1")))
    for bs, v in t.throughput_per_s.items():
        tab.add_row(f"throughput @ batch {bs}", f"{_fmt(v)} /s", f"{_fmt(s.throughput_per_s.get(bs))} /s")
    console.print(tab)
    summary = Table(show_header=False, box=None)
    if isinstance(r, SentenceEmbeddingReport):
        summary.add_row("mean cosine to teacher (held-out)", _fmt(r.mean_cosine))
        summary.add_row("probe accuracy, student / teacher", _fmt(r.probe_ratio, "pct"))
    elif isinstance(r, SequenceClassificationReport):
        summary.add_row("agreement with teacher", _fmt(r.agreement, "pct"))
        summary.add_row("mean KL(teacher‖student)", _fmt(r.mean_kl))
    summary.add_row("parameter ratio", _fmt(r.parameter_ratio, "x"))
    summary.add_row("compression ratio (bytes)", _fmt(r.compression_ratio, "x"))
    for k, v in r.speedup.items():
        summary.add_row(f"speedup ({k})", _fmt(v, "x"))
    summary.add_row("teacher outputs cached", str(r.cache.teacher_outputs))
    if r.onnx:
        summary.add_row("ONNX max |Δ| vs PyTorch", _fmt(r.onnx.max_abs_diff))
    _phases(summary, r)
    console.print(summary)
    if r.summary:
        console.print(f"\n[bold]{r.summary}[/]", highlight=False)


def _phases(summary: Table, r: ReportBase) -> None:
    for phase, sec in r.wall_time_s.items():
        summary.add_row(f"wall time · {phase}", f"{sec:.2f} s")


def render_report(r: AnyReport) -> None:
    """Print a compression report as tables (teacher vs student, ratios, latency, phases)."""
    if not isinstance(r, ClassificationReport):
        render_text_report(r)
        return
    t, s = r.teacher, r.student
    tab = Table(title=f"compression report · {r.job_id or ''}", title_justify="left")
    tab.add_column("")
    tab.add_column("teacher", justify="right")
    tab.add_column("student", justify="right")
    tab.add_row("validation top-1", _fmt(t.val_top1, "pct"), _fmt(s.val_top1, "pct"))
    if r.top5:
        tab.add_row("top-5", _fmt(r.top5.teacher, "pct"), _fmt(r.top5.student, "pct"))
    tab.add_row("parameters", _fmt(t.parameters), _fmt(s.parameters))
    tab.add_row("bytes on disk", _fmt(t.bytes, "bytes"), _fmt(s.bytes, "bytes"))
    tab.add_row("FLOPs / sample", _fmt(t.flops_per_sample), _fmt(s.flops_per_sample))
    for bs, tl in t.latency_ms.items():
        tab.add_row(f"latency p50/p95 @ batch {bs}", _latency(tl), _latency(s.latency_ms.get(bs)))
    console.print(tab)
    summary = Table(show_header=False, box=None)
    summary.add_row("compression ratio (bytes)", _fmt(r.compression_ratio, "x"))
    summary.add_row("parameter ratio", _fmt(r.parameter_ratio, "x"))
    for bs, v in r.speedup.items():
        summary.add_row(f"speedup @ batch {bs}", _fmt(v, "x"))
    summary.add_row("agreement with teacher", _fmt(r.agreement, "pct"))
    summary.add_row("mean KL(teacher‖student)", _fmt(r.mean_kl))
    if r.top1_drop_points is not None:
        summary.add_row("top-1 lost (teacher − student)", f"{r.top1_drop_points:.2f} points")
    if r.onnx:
        summary.add_row("ONNX max |Δ| vs PyTorch", _fmt(r.onnx.max_abs_diff))
    for label, v in (("int8 student", r.quantized), ("pruned student", r.pruned)):
        if v:
            summary.add_row(f"{label} ({v.artifact})", f"top-1 {_fmt(v.val_top1, 'pct')}, {_fmt(v.bytes, 'bytes')}, "
                                                       f"p50 @1 {_fmt(v.latency_ms['1'].p50 if '1' in v.latency_ms else None)} ms (CPU)")
    if r.baseline:
        alone = f"top-1 {_fmt(r.baseline.val_top1, 'pct')}" if r.baseline.val_top1 is not None else (r.baseline.note or "–")
        summary.add_row("student trained alone", alone)
    if r.distillation_gain_points is not None:
        summary.add_row("distillation gain", f"{r.distillation_gain_points:+.2f} points")
    if r.cache:
        summary.add_row("teacher outputs cached", str(r.cache.teacher_outputs))
    _phases(summary, r)
    console.print(summary)
    if r.summary:
        console.print(f"\n[bold]{r.summary}[/]", highlight=False)


@app.command()
def report(job_id: str, as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
           html: Optional[Path] = typer.Option(None, "--html", help="Also write the HTML report (with plots) to this file.")) -> None:
    """Print a succeeded job's compression report."""
    try:
        r = _client().report(job_id)
        if html is not None:
            html.write_text(_client().report_html(job_id))
            err.print(f"HTML report written to {html}", highlight=False)
    except ApiError as e:
        _fail(e)
    if as_json:
        print(r.model_dump_json(indent=2))
    else:
        render_report(r)


@app.command()
def compare(job_ids: list[str] = typer.Argument(..., help="Two or more job ids."),
            html: Optional[Path] = typer.Option(None, "--html", help="Write the side-by-side HTML page to this file.")) -> None:
    """Compare succeeded jobs: quality (validation top-1, or linear-probe accuracy for embeddings), size, latency and
    gain side by side."""
    client = _client()
    try:
        reports = client.compare(job_ids)
        if html is not None:
            html.write_text(client.compare_html(job_ids))
            err.print(f"HTML comparison written to {html}", highlight=False)
    except ApiError as e:
        _fail(e)
    t = Table("task", "metric", "teacher", "student", "student bytes", "compression", "speedup @1", "gain")
    t.add_column("job", no_wrap=True, min_width=max(len(j) for j in job_ids))
    for r in reports:
        q = r.quality()
        gain = r.gain_points()
        t.add_row(r.task, q.label, _fmt(q.teacher, "pct"), _fmt(q.student, "pct"), _fmt(r.student.bytes, "bytes"),
                  _fmt(r.compression_ratio, "x"), _fmt(r.speedup.get("1"), "x"), "–" if gain is None else f"{gain:+.2f}",
                  r.job_id or "")
    console.print(t)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
