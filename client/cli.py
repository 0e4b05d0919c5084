"""The ``stillhouse`` command line (typer + rich), built on ``client.api.Stillhouse``.

    stillhouse upload teacher.safetensors --purpose teacher
    stillhouse submit spec.yaml --wait --timeout 3600   # validated first, then file paths uploaded (once), then followed
    stillhouse wait JOB_ID                 # live progress bar (the job's event stream)
    stillhouse report JOB_ID
    stillhouse download JOB_ID --dir out/

Every command takes ``--json`` (machine-readable output on stdout; messages go to stderr). Exit codes: 0 success;
1 the job failed; 2 an API or usage error; 3 the job was cancelled; 4 ``--timeout`` passed (the job goes on).
The API address comes from ``--api`` or ``STILLHOUSE_API_URL`` (default http://127.0.0.1:8000), the API key
(when the server requires one) from ``--api-key`` or ``STILLHOUSE_API_KEY``.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from client.api import ApiError, Job, Stillhouse
from distill.report import (
    AnyReport,
    BaselineSummary,
    CausalLMReport,
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

EXIT_FAILED, EXIT_ERROR, EXIT_CANCELLED, EXIT_TIMEOUT = 1, 2, 3, 4
PENDING_FILE_ID = "file_pending"
"""The placeholder file id of a spec's local file in the dry run that comes before its upload."""

# spec locations that may hold {"path": ...} instead of {"file_id": ...}, with the purpose to upload as
PATH_FIELDS = (("teacher",), "teacher"), (("data", "train"), "dataset"), (("data", "validation"), "dataset"), (("data", "transfer"), "dataset")


class _State:
    api_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None


def _client() -> Stillhouse:
    return Stillhouse(_State.api_url, api_key=_State.api_key or "")


def _fail(e: ApiError) -> None:
    err.print(f"[bold red]error[/] [red]{e.code}[/]: {e.message}" + (f" [dim](param: {e.param})[/]" if e.param else ""))
    raise typer.Exit(EXIT_ERROR)


def _print_json(value: Any) -> None:
    """``value`` (a model, a list of models, or anything JSON can hold) as indented JSON on stdout."""
    def plain(v: Any) -> Any:
        return v.model_dump(mode="json") if hasattr(v, "model_dump") else v

    value = [plain(v) for v in value] if isinstance(value, list) else plain(value)
    print(json.dumps(value, indent=2, default=str))


JSON_OPTION = typer.Option(False, "--json", help="Print the result as JSON on stdout (messages go to stderr).")


def _run(call: Callable[[], Any], as_json: bool, line: Callable[[Any], str]) -> Any:
    """Call the API (``call``), exit 2 on its error, and print the result: as JSON with ``as_json``, else ``line(result)``."""
    try:
        result = call()
    except ApiError as e:
        _fail(e)
    if as_json:
        _print_json(result)
    else:
        console.print(line(result), highlight=False, soft_wrap=True)
    return result


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
        _print_json(f)
        return
    extra = f", {f.parameters:,} parameters" if f.parameters else ""
    console.print(f"[green]{f.id}[/] {f.filename}: {f.format}, {f.bytes:,} bytes{extra}", highlight=False)
    print(f.id)


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``1e-3`` is a number (YAML 1.1, PyYAML's default, reads it as the
    string '1e-3', which the spec's strict numbers refuse)."""


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
               r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def load_spec(path: Path) -> dict[str, Any]:
    """Read a JSON or YAML job spec (YAML 1.2 floats: ``lr: 1e-3`` is a number). Raises typer.BadParameter for
    unreadable files."""
    try:
        text = path.read_text()
        spec = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_SpecLoader)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise typer.BadParameter(f"cannot read spec {path}: {e}") from e
    if not isinstance(spec, dict):
        raise typer.BadParameter(f"spec {path} must be a mapping")
    return spec


def _path_nodes(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(role, purpose, node) of each spec location holding ``path:`` (teacher, data.train, ...)."""
    out = []
    for keys, purpose in PATH_FIELDS:
        node: Any = spec
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and "path" in node:
            out.append((".".join(keys), purpose, node))
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def upload_spec_paths(client: Stillhouse, spec: dict[str, Any], base: Path, say=lambda m: None, *, validate: bool = True) -> dict[str, Any]:
    """Replace each ``path: FILE`` at teacher / data.train / data.validation / data.transfer by a ``file_id`` (paths
    relative to ``base``), uploading as little as possible and nothing for a spec the server would refuse:

    1. each local file's sha256 is computed and looked up (``GET /v1/files?sha256=``): a file the tenant already has
       is used as it is, not uploaded again;
    2. with ``validate``, the spec is checked by a dry run of ``POST /v1/jobs`` (the files still to upload as
       ``pending`` placeholders), so a typo or an out-of-range number fails before any upload;
    3. the remaining files are uploaded (the server also answers an upload of known content with the existing file).

    Returns the spec (modified in place). Raises typer.BadParameter for a missing file, ApiError for the server's refusal."""
    pending = []
    for role, purpose, node in _path_nodes(spec):
        p = Path(node.pop("path"))
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise typer.BadParameter(f"{role}.path: no file {p}")
        found = client.find_file(_sha256(p), purpose)
        if found is not None:
            node["file_id"] = found.id
            say(f"{p}: already uploaded as {found.id} (same sha256), not uploaded again")
        else:
            node["file_id"] = PENDING_FILE_ID
            pending.append((role, purpose, node, p))
    if validate:
        client.validate_job(spec, pending=[role for role, *_ in pending])
    for role, purpose, node, p in pending:
        f = client.upload(p, purpose)
        node["file_id"] = f.id
        say(f"uploaded {p} -> {f.id} ({f.format}, {f.bytes:,} bytes)")
    return spec


def _metadata(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--metadata wants KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


@app.command()
def submit(spec_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Job spec, JSON or YAML."),
           wait_: bool = typer.Option(False, "--wait", help="Follow the job until it ends; exit 0 if it succeeded, 1 failed, "
                                                           "3 cancelled, 4 after --timeout."),
           timeout: Optional[float] = typer.Option(None, "--timeout", min=0, help="With --wait: give up waiting after this many "
                                                                                  "seconds (exit 4; the job goes on)."),
           metadata: Optional[list[str]] = typer.Option(None, "--metadata", help="KEY=VALUE label kept with the job (repeatable)."),
           idempotency_key: Optional[str] = typer.Option(None, "--idempotency-key", help="Repeat-safe submission: the same key "
                                                         "and spec return the job the first submission made."),
           as_json: bool = JSON_OPTION) -> None:
    """Create a job from a spec. The spec is validated first (a dry run), then its local files (``path:``) are
    uploaded, those the server already has (same sha256) skipped. Prints the job id (``--json``: the job object;
    with ``--wait``, the finished job)."""
    client = _client()
    say = lambda m: err.print(m, highlight=False)  # noqa: E731
    try:
        spec = load_spec(spec_path)
        meta = _metadata(metadata)
        if meta:
            spec["metadata"] = {**spec.get("metadata", {}), **meta}
        spec = upload_spec_paths(client, spec, spec_path.parent, say)
        job = client.create_job(spec, idempotency_key=idempotency_key)
    except ApiError as e:
        _fail(e)
    if not wait_:
        if as_json:
            _print_json(job)
        else:
            err.print(f"job [green]{job.id}[/] {job.status}", highlight=False)
            print(job.id)
        return
    err.print(f"job [green]{job.id}[/] {job.status}", highlight=False)
    _follow(client, job.id, timeout, as_json)


@app.command()
def status(job_id: str, as_json: bool = typer.Option(False, "--json", help="Print the job object as JSON.")) -> None:
    """Show a job's status, phase, progress and error."""
    try:
        job = _client().get_job(job_id)
    except ApiError as e:
        _fail(e)
    if as_json:
        _print_json(job)
        return
    t = Table(show_header=False, box=None)
    t.add_column(no_wrap=True)
    t.add_column(no_wrap=False, overflow="fold")
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


def _id_column(t: Table, header: str, ids: list[str]) -> None:
    """An id column that never wraps, folds or truncates: as wide as its longest id."""
    t.add_column(header, no_wrap=True, overflow="ignore", min_width=max([len(header), *map(len, ids)]))


@app.command(name="jobs")
def list_jobs(status_: Optional[str] = typer.Option(None, "--status", help="Only this status."),
              limit: int = typer.Option(20, help="How many."),
              metadata: Optional[list[str]] = typer.Option(None, "--metadata", help="Only jobs with KEY=VALUE (repeatable)."),
              as_json: bool = JSON_OPTION) -> None:
    """List recent jobs (ids in full, however narrow the terminal)."""
    try:
        jobs = _client().list_jobs(status_, limit, _metadata(metadata))
    except ApiError as e:
        _fail(e)
    if as_json:
        _print_json([j.model_dump(mode="json") for j in jobs])
        return
    t = Table()
    _id_column(t, "id", [j.id for j in jobs])
    for col in ("name", "status", "progress", "created"):
        t.add_column(col)
    for j in jobs:
        t.add_row(j.id, j.name or "", j.status, f"{100 * (j.progress.fraction or 0):.0f}%", j.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    console.print(t)


@app.command()
def cancel(job_id: str, as_json: bool = JSON_OPTION) -> None:
    """Cancel a queued or running job."""
    _run(lambda: _client().cancel(job_id), as_json, lambda job: f"{job.id}: {job.status}")


@app.command()
def delete(job_id: str, as_json: bool = JSON_OPTION) -> None:
    """Delete a finished job with its artifacts and report (frees the tenant's storage)."""
    _run(lambda: _client().delete_job(job_id), as_json, lambda out: f"{job_id}: deleted, {out['freed_bytes']:,} bytes of artifacts freed")


@app.command()
def events(job_id: str, follow: bool = typer.Option(False, "--follow", "-f", help="Stay on the live stream until the job ends."),
           as_json: bool = typer.Option(False, "--json", help="One JSON object per line (JSON Lines) on stdout.")) -> None:
    """Print a job's events (``--follow``: live, from its event stream, until the job ends)."""
    client = _client()

    def show(e) -> None:
        if as_json:
            print(e.model_dump_json(), flush=True)
        else:
            console.print(f"{e.created_at:%H:%M:%S} {e.id:>6} {e.type:<10} {e.message}", highlight=False, soft_wrap=True)

    try:
        if not follow:
            for e in client.events(job_id):
                show(e)
            return
        for msg in client.stream_events(job_id):
            if msg.kind == "event":
                show(msg.event)
    except ApiError as e:
        _fail(e)


def _follow(client: Stillhouse, job_id: str, timeout: float | None = None, as_json: bool = False) -> Job:
    """Follow the job to its end (live progress bar on stderr unless ``as_json``), print it, and exit with its code:
    returns for success, raises typer.Exit(1 failed, 3 cancelled, 4 timeout, 2 API error)."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=err, transient=False, disable=as_json) as bar:
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
            job = client.wait(job_id, poll_s=0.5, on_update=show, timeout_s=timeout)
        except ApiError as e:
            _fail(e)
        except TimeoutError:
            err.print(f"[yellow]{job_id} has not ended after {timeout:g} s[/] (it goes on; `stillhouse wait {job_id}` follows it)",
                      highlight=False)
            if as_json:
                _print_json(client.get_job(job_id))
            raise typer.Exit(EXIT_TIMEOUT)
    if as_json:
        _print_json(job)
    if job.status == "succeeded":
        err.print(f"[green]{job.id} succeeded[/] in {job.timings.get('running_s') or 0:.1f} s", highlight=False)
        return job
    msg = f": {job.error.code}: {job.error.message}" if job.error else ""
    err.print(f"[red]{job.id} {job.status}[/]{msg}", highlight=False)
    raise typer.Exit(EXIT_CANCELLED if job.status == "cancelled" else EXIT_FAILED)


@app.command()
def wait(job_id: str, timeout: Optional[float] = typer.Option(None, "--timeout", min=0, help="Give up after this many seconds (exit 4)."),
         as_json: bool = JSON_OPTION) -> None:
    """Follow a job with a live progress bar until it ends: exit 0 if it succeeded, 1 failed, 3 cancelled, 4 timeout."""
    _follow(_client(), job_id, timeout, as_json)


@app.command()
def download(job_id: str, dir: Path = typer.Option(Path("."), "--dir", help="Where to write the files."),
             name: Optional[list[str]] = typer.Option(None, "--name", help="Only these artifacts (repeatable)."),
             as_json: bool = JSON_OPTION) -> None:
    """Download a job's artifacts (student.safetensors, student.json, student.onnx), checking each sha256."""
    client = _client()
    try:
        arts = client.artifacts(job_id)
        wanted = [a for a in arts if not name or a.name in name]
        if not wanted:
            raise ApiError(404, "not_found", f"job {job_id} has no artifacts" + (f" named {', '.join(name)}" if name else "") + " (has it succeeded?)")
        done = []
        for a in wanted:
            out = client.download(job_id, a.name, dir)
            done.append({"name": a.name, "path": str(out), "bytes": a.bytes, "sha256": a.sha256})
            if not as_json:
                console.print(f"{out}  {a.bytes:,} bytes  sha256 {a.sha256}", highlight=False, soft_wrap=True)
    except ApiError as e:
        _fail(e)
    if as_json:
        _print_json(done)


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


def _interval(iv: list[float] | None) -> str:
    return "" if not iv else f"[{_fmt(iv[0], 'pct')}, {_fmt(iv[1], 'pct')}]"


def _latency(lat: LatencyMs | None) -> str:
    return f"{_fmt(lat.p50 if lat else None)} / {_fmt(lat.p95 if lat else None)} ms"


def _baseline_text(b: BaselineSummary) -> str:
    """The student trained alone: its top-1 with its Wilson interval, or the note why there is none."""
    if b.val_top1 is None:
        return b.note or "–"
    return f"top-1 {_fmt(b.val_top1, 'pct')}" + (f" {_interval(b.val_top1_interval)}" if b.val_top1_interval else "")


def _comparison_rows(summary: Table, comparisons: dict[str, Any] | None) -> None:
    """One row per paired comparison (``distill.report.Comparison``): difference, 95% interval, McNemar p, verdict."""
    for c in (comparisons or {}).values():
        low, high = c.interval_points
        summary.add_row(f"{c.a} − {c.b}", f"{c.difference_points:+.2f} points, 95% [{low:+.2f}, {high:+.2f}], "
                                          f"McNemar p = {c.mcnemar_p:.2g}: {_verdict(c)}")


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
    if isinstance(r, SequenceClassificationReport) and (r.teacher_top1_interval or r.student_top1_interval):
        tab.add_row("95% interval (Wilson)", _interval(r.teacher_top1_interval), _interval(r.student_top1_interval))
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
        if r.baseline is not None:
            summary.add_row("student trained alone", _baseline_text(r.baseline))
        if r.distillation_gain_points is not None:
            summary.add_row("distillation gain", f"{r.distillation_gain_points:+.2f} points")
        _comparison_rows(summary, r.comparisons)
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


def _ppl(p) -> str:
    return "–" if p is None else f"{p.perplexity:,.3f} [{p.low:,.3f}, {p.high:,.3f}]"


def render_lm_report(r: CausalLMReport) -> None:
    """Print the report of a causal-LM job: perplexities with intervals (teacher / alone / distilled), agreement, size,
    prefill/decode speed, the cache, and the first generations side by side."""
    t, s, p = r.teacher, r.student, r.perplexity
    alone = p.alone is not None
    tab = Table(title=f"compression report · {r.job_id or ''} · {r.task}", title_justify="left")
    tab.add_column("")
    for name in ["teacher", *(["student alone"] if alone else []), "distilled student"]:
        tab.add_column(name, justify="right")

    def row(label: str, tv: str, av: str, sv: str) -> None:
        tab.add_row(label, tv, *([av] if alone else []), sv)

    ag_alone = r.baseline.agreement if r.baseline and r.baseline.agreement else None
    row("held-out perplexity [95%]", _ppl(p.teacher), _ppl(p.alone), _ppl(p.student))
    row(r.quality().label, _fmt(1.0, "pct"), _fmt(ag_alone.top1_agreement if ag_alone else None, "pct"), _fmt(r.agreement.top1_agreement, "pct"))
    row("mean KL(teacher‖model)", "", _fmt(ag_alone.mean_kl_nats if ag_alone else None), _fmt(r.agreement.mean_kl_nats))
    row("layers", _fmt(t.layers), _fmt(s.layers), _fmt(s.layers))
    row("parameters", _fmt(t.parameters), _fmt(s.parameters), _fmt(s.parameters))
    row("bytes", _fmt(t.bytes, "bytes"), _fmt(s.bytes, "bytes"), _fmt(s.bytes, "bytes"))
    row("prefill tokens/s @ batch 1", _fmt(t.speed.prefill_tokens_per_s), "", _fmt(s.speed.prefill_tokens_per_s))
    row("decode tokens/s @ batch 1", _fmt(t.speed.decode_tokens_per_s), "", _fmt(s.speed.decode_tokens_per_s))
    console.print(tab)
    summary = Table(show_header=False, box=None)
    summary.add_row("parameter ratio", _fmt(r.parameter_ratio, "x"))
    for k, v in r.speedup.items():
        summary.add_row(f"speedup ({k})", _fmt(v, "x"))
    if r.perplexity_gain is not None:
        summary.add_row("perplexity gain (alone − distilled)", f"{r.perplexity_gain:+.3f}")
    c = r.cache
    summary.add_row("teacher outputs cached", str(c.teacher_outputs) + (f" (top-{c.top_k}, {c.bytes_per_token} bytes/token vs "
                                                                      f"{c.full_logits_bytes_per_token} for float16 logits)" if c.teacher_outputs else ""))
    if c.kl_mean_nats is not None:
        summary.add_row("KL(full‖cached), held-out", _fmt(c.kl_mean_nats))
    if r.generations is not None:
        summary.add_row("generations: exact match / token F1", f"{_fmt(r.generations.exact_match, 'pct')} / {_fmt(r.generations.token_f1_mean)}")
    _phases(summary, r)
    console.print(summary)
    if r.generations is not None and r.generations.examples:
        gen = Table(title="held-out prompts", title_justify="left")
        for col in ("prompt", "teacher", "student", "token F1"):
            gen.add_column(col)
        for g in r.generations.examples:
            gen.add_row(g.prompt, g.teacher, g.student, f"{g.token_f1:.2f}")
        console.print(gen)
    if r.summary:
        console.print(f"\n[bold]{r.summary}[/]", highlight=False)


def _phases(summary: Table, r: ReportBase) -> None:
    for phase, sec in r.wall_time_s.items():
        summary.add_row(f"wall time · {phase}", f"{sec:.2f} s")


def _selection(summary: Table, r: Any) -> None:
    """Method 'auto' rows: what was chosen and why, the candidates' selection top-1 on one line, the selection's cost."""
    sel = getattr(r, "selection", None)
    if sel is None:
        return
    if sel.chosen is None:
        summary.add_row("method auto", f"no selection: {sel.note}")
        return
    summary.add_row("method auto chose", f"{sel.chosen}{' (the student alone, no teacher)' if sel.student_alone else ''}: {sel.reason}")
    summary.add_row("candidates (selection top-1)", ", ".join(f"{c.name} {_fmt(c.selection_top1, 'pct')}" for c in sel.candidates))
    summary.add_row("selection split", sel.split_text())
    cost = f"{sel.steps_fraction:.0%} of the job's steps"
    if sel.cost_fraction_of_job_time is not None:
        cost += f", {sel.cost_fraction_of_job_time:.0%} of its time"
    summary.add_row("selection cost", cost)


def render_report(r: AnyReport) -> None:
    """Print a compression report as tables (teacher vs student, ratios, latency, phases)."""
    if isinstance(r, CausalLMReport):
        render_lm_report(r)
        return
    if not isinstance(r, ClassificationReport):
        render_text_report(r)
        return
    t, s = r.teacher, r.student
    tab = Table(title=f"compression report · {r.job_id or ''}", title_justify="left")
    tab.add_column("")
    tab.add_column("teacher", justify="right")
    tab.add_column("student", justify="right")
    tab.add_row("validation top-1", _fmt(t.val_top1, "pct"), _fmt(s.val_top1, "pct"))
    if t.val_top1_interval or s.val_top1_interval:
        tab.add_row("95% interval (Wilson)", _interval(t.val_top1_interval), _interval(s.val_top1_interval))
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
        summary.add_row("student trained alone", _baseline_text(r.baseline))
    if r.distillation_gain_points is not None:
        summary.add_row("distillation gain", f"{r.distillation_gain_points:+.2f} points")
    _comparison_rows(summary, r.labelled_comparisons())
    if r.cache:
        summary.add_row("teacher outputs cached", str(r.cache.teacher_outputs))
    _selection(summary, r)
    _phases(summary, r)
    console.print(summary)
    if r.summary:
        console.print(f"\n[bold]{r.summary}[/]", highlight=False)
    for w in r.warnings or []:
        console.print(f"warning {w.code}: {w.message}", style="yellow", highlight=False, markup=False)


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
            html: Optional[Path] = typer.Option(None, "--html", help="Write the side-by-side HTML page to this file."),
            as_json: bool = JSON_OPTION) -> None:
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
    if as_json:
        _print_json(reports)
        return
    t = Table("task", "metric", "teacher", "student", "student bytes", "compression", "speedup @1", "gain")
    _id_column(t, "job", job_ids)
    for r in reports:
        q = r.quality()
        gain = r.gain_points()
        t.add_row(r.task, q.label, _fmt(q.teacher, "pct"), _fmt(q.student, "pct"), _fmt(r.student.bytes, "bytes"),
                  _fmt(r.compression_ratio, "x"), _fmt(r.speedup.get("1"), "x"), "–" if gain is None else f"{gain:+.2f}",
                  r.job_id or "")
    console.print(t)


webhooks_app = typer.Typer(help="Webhook endpoints: signed job events (Standard Webhooks) POSTed to your URL.", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")


def _endpoint_line(ep: dict[str, Any]) -> str:
    state = "enabled" if ep["enabled"] else f"disabled ({ep.get('disabled_reason') or 'paused'})"
    return f"{ep['id']}  {ep['url']}  {','.join(ep['events'])}  {state}"


@webhooks_app.command("create")
def webhooks_create(url: str = typer.Argument(..., help="https:// URL that receives the events."),
                    event: Optional[list[str]] = typer.Option(None, "--event", help="job.succeeded, job.failed, job.cancelled, "
                                                                                    "sweep.succeeded, sweep.failed or sweep.cancelled "
                                                                                    "(repeatable; default all)."),
                    description: Optional[str] = typer.Option(None, help="Free text."), as_json: bool = JSON_OPTION) -> None:
    """Register an endpoint; prints its signing secret (whsec_…) this once, alone on stdout: keep it to verify the
    signatures."""
    try:
        ep = _client().create_webhook(url, event, description)
    except ApiError as e:
        _fail(e)
    if as_json:
        _print_json(ep)
        return
    err.print(_endpoint_line(ep), highlight=False, soft_wrap=True)
    err.print("signing secret (shown once; verify webhook-signature with it, e.g. the standardwebhooks package):", highlight=False)
    print(ep["secret"])  # alone on stdout: SECRET=$(stillhouse webhooks create URL)


@webhooks_app.command("list")
def webhooks_list(as_json: bool = JSON_OPTION) -> None:
    """The tenant's endpoints."""
    _run(lambda: _client().webhooks(), as_json, lambda eps: "\n".join(_endpoint_line(ep) for ep in eps))


@webhooks_app.command("delete")
def webhooks_delete(endpoint_id: str, as_json: bool = JSON_OPTION) -> None:
    """Delete an endpoint (and its delivery log)."""
    def call() -> dict[str, Any]:
        _client().delete_webhook(endpoint_id)
        return {"id": endpoint_id, "deleted": True}

    _run(call, as_json, lambda _: f"{endpoint_id}: deleted")


@webhooks_app.command("enable")
def webhooks_enable(endpoint_id: str, off: bool = typer.Option(False, "--off", help="Pause it instead."),
                    as_json: bool = JSON_OPTION) -> None:
    """Enable an endpoint again (e.g. after a 410 Gone disabled it), or pause it with --off."""
    _run(lambda: _client().update_webhook(endpoint_id, enabled=not off), as_json, _endpoint_line)


@webhooks_app.command("rotate-secret")
def webhooks_rotate(endpoint_id: str, expire_previous_in: Optional[float] = typer.Option(
                        None, "--expire-previous-in", help="Seconds the old secret still signs (server default 24 h)."),
                    as_json: bool = JSON_OPTION) -> None:
    """Give an endpoint a new secret, printed this once; the old one also signs during the grace period."""
    try:
        ep = _client().rotate_webhook_secret(endpoint_id, expire_previous_in)
    except ApiError as e:
        _fail(e)
    if as_json:
        _print_json(ep)
        return
    err.print(f"new secret of {endpoint_id} (the previous one also signs until {ep.get('previous_secret_expires_at')}):", highlight=False)
    print(ep["secret"])


@webhooks_app.command("test")
def webhooks_test(endpoint_id: str, as_json: bool = JSON_OPTION) -> None:
    """Send a webhook.test event to the endpoint (a worker delivers it; see `stillhouse webhooks deliveries`)."""
    _run(lambda: _client().test_webhook(endpoint_id), as_json, lambda d: f"{d['id']}: {d['event_type']} queued")


@webhooks_app.command("deliveries")
def webhooks_deliveries(endpoint_id: str, status_: Optional[str] = typer.Option(None, "--status", help="pending, succeeded or failed."),
                        limit: int = typer.Option(20, help="How many, newest first."), as_json: bool = JSON_OPTION) -> None:
    """The endpoint's delivery log: each event, its status and attempts."""
    def line(d: dict[str, Any]) -> str:
        last = d["last_status_code"] if d["last_status_code"] is not None else (d["last_error"] or "-")
        return f"{d['id']}  {d['event_type']}  {d['job_id'] or '-'}  {d['status']}  attempts {d['attempts']}  last {last}"

    _run(lambda: _client().webhook_deliveries(endpoint_id, status_, limit), as_json, lambda rows: "\n".join(map(line, rows)))




sweep_app = typer.Typer(help="Sweeps: search student sizes and distillation settings; each trial a job; the front.",
                        no_args_is_help=True)
app.add_typer(sweep_app, name="sweep")


def _verdict(c: Any) -> str:
    """A comparison's verdict in words: 'a better' / 'b better' name the model ('teacher better'), else as stored."""
    return {"a better": f"{c.a} better", "b better": f"{c.b} better"}.get(c.verdict, c.verdict)


def _sweep_line(sw: dict[str, Any]) -> str:
    t = sw["trials"]
    best = sw.get("best")
    return (f"sweep {sw['id']} {sw['status']}" + (f" ({sw['stop_reason']})" if sw.get("stop_reason") else "")
            + f": {t['created']}/{t['max_trials']} trials, {t['succeeded']} succeeded, {t['running']} running, {t['queued']} queued, "
            f"{t['failed']} failed, {t['cancelled']} cancelled" + (f", {t['pruned']} pruned" if t.get("pruned") else "")
            + ("; waiting for a free job slot of the tenant" if sw.get("waiting_for_job_slot") else "")
            + (f"; best trial {best['trial']} {best['scores']}" if best else ""))


def _wait_sweep(client: Stillhouse, sweep_id: str, timeout: float | None, as_json: bool) -> None:
    """Progress bar over the sweep's trials until it ends; exit 0 succeeded, 1 failed, 3 cancelled, 4 timeout."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=err, transient=False) as bar:
        task = bar.add_task(f"sweep {sweep_id}", total=None, info="")

        def update(sw: dict[str, Any]) -> None:
            t = sw["trials"]
            done = t["succeeded"] + t["failed"] + t["cancelled"]
            bar.update(task, total=t["max_trials"], completed=done,
                       info=f"{t['running']} running, {t['queued']} queued" + (f", best {sw['best']['scores']}" if sw.get("best") else ""))

        try:
            sw = client.wait_sweep(sweep_id, timeout_s=timeout, on_update=update)
        except TimeoutError as e:
            err.print(str(e))
            raise typer.Exit(EXIT_TIMEOUT)
        except ApiError as e:
            _fail(e)
    if as_json:
        _print_json(sw)
    else:
        console.print(_sweep_line(sw), highlight=False, soft_wrap=True)
    if sw["status"] != "succeeded":
        raise typer.Exit(EXIT_CANCELLED if sw["status"] == "cancelled" else EXIT_FAILED)


@sweep_app.command("submit")
def sweep_submit(spec_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Sweep spec, JSON or YAML."),
                 wait_: bool = typer.Option(False, "--wait", help="Follow the sweep until it ends (exit 0/1/3/4 as submit)."),
                 timeout: Optional[float] = typer.Option(None, "--timeout", min=0, help="With --wait: give up after this many seconds."),
                 as_json: bool = JSON_OPTION) -> None:
    """Start a sweep: ``base`` (a job spec; its local ``path:`` files are uploaded as ``submit`` does), ``search_space``,
    ``objectives``, ``sampler``, ``budget``. Prints the sweep id."""
    client = _client()
    say = lambda m: err.print(m, highlight=False)  # noqa: E731
    try:
        body = load_spec(spec_path)
        if isinstance(body.get("base"), dict):
            upload_spec_paths(client, body["base"], spec_path.parent, say)
        sw = client.create_sweep(body)
    except ApiError as e:
        _fail(e)
    err.print(_sweep_line(sw), highlight=False)
    if wait_:
        _wait_sweep(client, sw["id"], timeout, as_json)
    elif as_json:
        _print_json(sw)
    else:
        print(sw["id"])


@sweep_app.command("wait")
def sweep_wait(sweep_id: str, timeout: Optional[float] = typer.Option(None, "--timeout", min=0, help="Give up after this many seconds (exit 4)."),
               as_json: bool = JSON_OPTION) -> None:
    """Follow a sweep with a progress bar over its trials until it ends; exit 0 succeeded, 1 failed, 3 cancelled, 4 timeout."""
    _wait_sweep(_client(), sweep_id, timeout, as_json)


@sweep_app.command("status")
def sweep_status(sweep_id: str, as_json: bool = JSON_OPTION) -> None:
    """Show a sweep's status and progress."""
    _run(lambda: _client().sweep(sweep_id), as_json, _sweep_line)


@sweep_app.command("cancel")
def sweep_cancel(sweep_id: str, as_json: bool = JSON_OPTION) -> None:
    """Cancel a sweep: no new trial; queued trials cancelled, running ones stopped."""
    _run(lambda: _client().cancel_sweep(sweep_id), as_json, _sweep_line)


@sweep_app.command("front")
def sweep_front(sweep_id: str, as_json: bool = JSON_OPTION) -> None:
    """The sweep's front as a table: each non-dominated trial's params, held-out validation top-1 with its 95%
    interval, selection-split top-1, bytes, p50 latency and job (download its student with ``stillhouse download JOB``)."""
    try:
        front = _client().sweep_front(sweep_id)
    except ApiError as e:
        _fail(e)
    if as_json:
        _print_json(front)
        return
    t = Table(title=f"front of {sweep_id}" + ("" if front["final"] else " (so far)"))
    for h in ("trial", "params", "val top-1", "95% interval", "selection top-1", "bytes", "p50 ms (batch 1)", "job"):
        if h == "job":  # ids never cut, whatever the terminal's width
            _id_column(t, h, [m["job_id"] for m in front["data"]])
        else:
            t.add_column(h, overflow="fold")  # params fold onto more lines rather than end in an ellipsis
    teacher = front.get("teacher")
    if teacher:
        t.add_row("teacher", "", _fmt(teacher.get("val_top1"), "pct"), _ci(teacher.get("interval95")), "",
                  f"{teacher.get('bytes') or 0:,}", _p50(teacher.get("latency_ms")), "")
    for m in front["data"]:
        h = m.get("holdout") or {}
        t.add_row(str(m["trial"]), json.dumps(m["params"]), _fmt(h.get("student_val_top1"), "pct"), _ci(h.get("student_interval95")),
                  _fmt(m.get("selection_top1"), "pct"), f"{m.get('bytes') or 0:,}", _p50(m.get("latency_ms")), m["job_id"])
    console.print(t)


def _ci(v: list[float] | None) -> str:
    return "-" if not v else f"{100 * v[0]:.1f}-{100 * v[1]:.1f}%"


def _p50(lat: dict[str, Any] | None) -> str:
    v = ((lat or {}).get("1") or {}).get("p50")
    return "-" if v is None else f"{v:.3f}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
