"""The HTML rendering of compression reports (Jinja2 template + matplotlib plots): one job, or several side by side."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from app.reports import plots
from distill.report import (
    AnyReport,
    CausalLMReport,
    ClassificationReport,
    Comparison,
    LatencyMs,
    SentenceEmbeddingReport,
    SequenceClassificationReport,
    TextReportBase,
)


@lru_cache
def _env() -> Environment:
    return Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape(["html"]))


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def _num(v: Any, unit: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.4g}{unit}"
    return f"{v:,}{unit}"


def _bytes(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v / 1024:,.1f} KiB" if v < 1024**2 else f"{v / 1024**2:,.2f} MiB"


def _interval(iv: list[float] | None) -> str:
    return "–" if not iv else f"[{_pct(iv[0])}, {_pct(iv[1])}]"


def _comparison(c: Comparison) -> str:
    low, high = c.interval_points
    return (f"{c.difference_points:+.2f} points, 95% interval [{low:+.2f}, {high:+.2f}], McNemar p = {c.mcnemar_p:.2g} "
            f"({c.verdict.replace('a better', c.a + ' better').replace('b better', c.b + ' better')})")


def _latency(lat: LatencyMs | None) -> str:
    return f"{_num(lat.p50 if lat else None)} / {_num(lat.p95 if lat else None)} ms"


@dataclass(frozen=True)
class _Column:
    """One model's column of the classification table."""

    name: str
    val_top1: float | None
    parameters: int | None
    bytes: int | None
    flops_per_sample: int | None
    latency_ms: dict[str, LatencyMs]
    interval: list[float] | None = None


def _tensor_view(r: ClassificationReport) -> dict[str, Any]:
    t, s = r.teacher, r.student
    extras = [("quantised student", v) for v in [r.quantized] if v] + [("pruned student", v) for v in [r.pruned] if v]
    base = [_Column("student alone", r.baseline.val_top1, r.baseline.parameters or s.parameters, s.bytes, s.flops_per_sample,
                    s.latency_ms, r.baseline.val_top1_interval)] if r.baseline else []
    models = [_Column("teacher", t.val_top1, t.parameters, t.bytes, t.flops_per_sample, t.latency_ms, t.val_top1_interval), *base,
              _Column(r.student_label(), s.val_top1, s.parameters, s.bytes, s.flops_per_sample, s.latency_ms,
                      s.val_top1_interval),
              *[_Column(name, v.val_top1, v.parameters, v.bytes, None, v.latency_ms) for name, v in extras]]
    rows = [["validation top-1", *[_pct(m.val_top1) for m in models]]]
    if any(m.interval for m in models):
        rows.append(["95% interval (Wilson)", *[_interval(m.interval) for m in models]])
    for label, pair in (("top-5", r.top5), ("expected calibration error", r.ece)):
        if pair:
            rows.append([label, _pct(pair.teacher), *(["–"] * len(base)), _pct(pair.student), *(["–"] * len(extras))])
    rows += [["parameters", *[_num(m.parameters) for m in models]],
             ["bytes on disk", *[_bytes(m.bytes) for m in models]],
             ["FLOPs / sample", *[_num(m.flops_per_sample) for m in models]]]
    for bs in t.latency_ms:
        rows.append([f"latency p50 / p95 @ batch {bs}", *[_latency(m.latency_ms.get(bs)) for m in models]])
    ratios = [("compression ratio (teacher bytes / student bytes)", _num(r.compression_ratio, "×")),
              ("parameter ratio", _num(r.parameter_ratio, "×")),
              *[(f"speedup @ batch {k}", _num(v, "×")) for k, v in r.speedup.items()],
              ("agreement with the teacher", _pct(r.agreement)), ("mean KL(teacher ‖ student)", _num(r.mean_kl))]
    if r.distillation_gain_points is not None:
        ratios.append(("distillation gain (distilled − alone)", f"{r.distillation_gain_points:+.2f} points"))
    for c in r.labelled_comparisons().values():
        ratios.append((f"{c.a} − {c.b} (paired, {c.rows:,} rows)", _comparison(c)))
    if r.cache:
        ratios.append(("teacher outputs cached", str(r.cache.teacher_outputs)))
    ratios += _selection_rows(r)
    points = [(m.name, m.bytes, m.val_top1) for m in models]
    lat = {m.name: {f"batch {k}": v.p50 for k, v in m.latency_ms.items()} for m in models if m.latency_ms}
    vs_alone = (r.comparisons or {}).get("distilled_vs_alone")
    return {"columns": [m.name for m in models], "rows": rows, "ratios": ratios,
            "extra_plots": [plots.accuracy_vs_size(points), plots.latency_bars(lat)],
            "warnings": [(w.code, w.message) for w in r.warnings or []],
            "worse": vs_alone.verdict == "b better" if vs_alone else (r.distillation_gain_points or 0) < 0}


def _selection_rows(r: ClassificationReport) -> list[tuple[str, str]]:
    """Method 'auto': the choice and why, each candidate's selection top-1 and the selection's cost, as (label, value)."""
    sel = r.selection
    if sel is None:
        return []
    if sel.chosen is None:
        return [("method auto", f"no selection: {sel.note}")]
    cost = f"{sel.steps_fraction:.0%} of the job's training steps"
    if sel.cost_fraction_of_job_time is not None:
        cost += f", {sel.cost_fraction_of_job_time:.0%} of its time"
    return [("method auto chose", f"{sel.chosen}{' (the student alone, no teacher)' if sel.student_alone else ''}: {sel.reason}"),
            *[(f"candidate {c.name}", f"selection top-1 {_pct(c.selection_top1)} {_interval(c.selection_top1_interval)}")
              for c in sel.candidates],
            ("selection split", sel.split_text()), (f"selection cost ({sel.selection_rows:,} selection rows)", cost)]


def _text_view(r: TextReportBase) -> dict[str, Any]:
    t, s = r.teacher, r.student
    q = r.quality()
    rows = [["layers", _num(t.layers), _num(s.layers)],
            ["parameters", _num(t.parameters), _num(s.parameters)],
            ["bytes", _bytes(t.bytes), _bytes(s.bytes)],
            [q.label, _pct(q.teacher), _pct(q.student)]]
    rows.append(["latency p50 / p95 per sentence", _latency(t.latency_ms.get("1")), _latency(s.latency_ms.get("1"))])
    tput = {}
    for bs, v in t.throughput_per_s.items():
        sv = s.throughput_per_s.get(bs)
        rows.append([f"throughput @ batch {bs}", f"{_num(v)} /s", f"{_num(sv)} /s"])
        tput = {"teacher": {f"batch {bs}": v}, "student": {f"batch {bs}": sv}}
    if isinstance(r, SentenceEmbeddingReport):
        ratios = [("mean cosine to the teacher", _num(r.mean_cosine)), ("probe accuracy, student / teacher", _pct(r.probe_ratio))]
    elif isinstance(r, SequenceClassificationReport):
        if r.teacher_top1_interval or r.student_top1_interval:
            rows.insert(4, ["95% interval (Wilson)", _interval(r.teacher_top1_interval), _interval(r.student_top1_interval)])
        ratios = [("agreement", _pct(r.agreement))]
        if r.baseline is not None and r.baseline.val_top1 is not None:
            ratios.append(("student trained alone: top-1", f"{_pct(r.baseline.val_top1)} {_interval(r.baseline.val_top1_interval)}"))
        elif r.baseline is not None:
            ratios.append(("student trained alone", r.baseline.note or "–"))
        if r.distillation_gain_points is not None:
            ratios.append(("distillation gain (distilled − alone)", f"{r.distillation_gain_points:+.2f} points"))
        ratios += [(f"{c.a} − {c.b} (paired, {c.rows:,} rows)", _comparison(c)) for c in (r.comparisons or {}).values()]
    else:
        ratios = []
    ratios += [("parameter ratio", _num(r.parameter_ratio, "×")), *[(f"speedup ({k})", _num(v, "×")) for k, v in r.speedup.items()]]
    return {"columns": ["teacher", "student"], "rows": rows, "ratios": [x for x in ratios if x[1] != "–"],
            "extra_plots": [plots.latency_bars(tput, unit="sentences / s", title="throughput")]}


def _ppl(p: Any) -> str:
    return "–" if p is None else f"{p.perplexity:,.3f} [{p.low:,.3f}, {p.high:,.3f}]"


def _lm_view(r: CausalLMReport) -> dict[str, Any]:
    """Teacher / student alone / distilled student: perplexity with its interval, agreement, size and speed; the
    cache's figures; the first generations side by side."""
    t, s, p = r.teacher, r.student, r.perplexity
    alone = p.alone is not None
    cols = ["teacher", *(["student alone"] if alone else []), "distilled student"]

    def row(label: str, tv: str, av: str, sv: str) -> list[str]:
        return [label, tv, *([av] if alone else []), sv]

    ag_alone = r.baseline.agreement if r.baseline and r.baseline.agreement else None
    rows = [row("held-out perplexity [95% interval]", _ppl(p.teacher), _ppl(p.alone), _ppl(p.student)),
            row(r.quality().label, "100.00%", _pct(ag_alone.top1_agreement if ag_alone else None), _pct(r.agreement.top1_agreement)),
            row("mean KL(teacher ‖ model), nats", "0", _num(ag_alone.mean_kl_nats if ag_alone else None), _num(r.agreement.mean_kl_nats)),
            row("layers", _num(t.layers), _num(s.layers), _num(s.layers)),
            row("parameters", _num(t.parameters), _num(s.parameters), _num(s.parameters)),
            row("bytes", _bytes(t.bytes), _bytes(s.bytes), _bytes(s.bytes)),
            row("prefill tokens/s @ batch 1", _num(t.speed.prefill_tokens_per_s), "", _num(s.speed.prefill_tokens_per_s)),
            row("decode tokens/s @ batch 1", _num(t.speed.decode_tokens_per_s), "", _num(s.speed.decode_tokens_per_s))]
    c = r.cache
    ratios = [("parameter ratio", _num(r.parameter_ratio, "×")), *[(f"speedup ({k})", _num(v, "×")) for k, v in r.speedup.items()]]
    if r.perplexity_gain is not None:
        ratios.append(("perplexity gain (alone − distilled)", f"{r.perplexity_gain:+.3f}"))
    ratios.append(("teacher outputs cached", str(c.teacher_outputs)))
    if c.teacher_outputs:
        ratios += [("cache: top-k", _num(c.top_k)), ("cache: bytes / token (vs full float16 logits)",
                                                       f"{_num(c.bytes_per_token)} vs {_num(c.full_logits_bytes_per_token)}"),
                   ("cache: KL(full ‖ cached) on held-out tokens, nats", _num(c.kl_mean_nats))]
    if r.generations is not None:
        ratios += [("generations: exact match", _pct(r.generations.exact_match)), ("generations: mean token F1", _num(r.generations.token_f1_mean))]
    speed = {"teacher": {"prefill": t.speed.prefill_tokens_per_s, "decode": t.speed.decode_tokens_per_s},
             "student": {"prefill": s.speed.prefill_tokens_per_s, "decode": s.speed.decode_tokens_per_s}}
    return {"columns": cols, "rows": rows, "ratios": [x for x in ratios if x[1] != "–"],
            "extra_plots": [plots.latency_bars(speed, unit="tokens / s", title="speed at batch 1")],
            "generations": [(g.prompt, g.teacher, g.student, f"{g.token_f1:.2f}") for g in (r.generations.examples if r.generations else [])]}


def report_view(job_id: str, name: str | None, report: AnyReport, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """What the template shows for one typed report: tables, ratios, plots (SVG strings), phases and the summary."""
    if isinstance(report, ClassificationReport):
        view = _tensor_view(report)
    elif isinstance(report, CausalLMReport):
        view = _lm_view(report)
    else:
        view = _text_view(report)
    curves = plots.training_curves(metrics)
    return {"job_id": job_id, "name": name, "task": report.task, "summary": report.summary, "gain": report.gain_points(),
            "worse": view.get("worse", False), "warnings": view.get("warnings", []),
            "columns": view["columns"], "rows": view["rows"], "ratios": view["ratios"],
            "plots": [p for p in [curves, *view["extra_plots"]] if p], "generations": view.get("generations", []),
            "phases": [(k, f"{v:.2f}") for k, v in report.wall_time_s.items() if v is not None]}


def render_html(title: str, views: list[dict[str, Any]]) -> str:
    """The HTML page for ``views`` (from ``report_view``); every user-provided string is escaped."""
    return _env().get_template("report.html").render(title=title, reports=views)
