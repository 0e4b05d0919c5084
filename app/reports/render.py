"""The HTML rendering of compression reports (Jinja2 template + matplotlib plots): one job, or several side by side."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from app.reports import plots


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


def _tensor_view(r: dict[str, Any]) -> dict[str, Any]:
    t, s = r.get("teacher", {}), r.get("student", {})
    base, quant, pruned = r.get("baseline"), r.get("quantized"), r.get("pruned")
    extras = [*([("quantised student", quant)] if quant else []), *([("pruned student", pruned)] if pruned else [])]
    models = [("teacher", t), *([("student alone", {**s, **base})] if base else []), ("distilled student", s), *extras]
    rows = [["validation top-1", *[_pct(m.get("val_top1")) for _, m in models]]]
    if r.get("top5"):
        rows.append(["top-5", _pct(r["top5"].get("teacher")), *(["–"] if base else []), _pct(r["top5"].get("student")),
                     *(["–"] * len(extras))])
    if r.get("ece"):
        rows.append(["expected calibration error", _pct(r["ece"].get("teacher")), *(["–"] if base else []), _pct(r["ece"].get("student")),
                     *(["–"] * len(extras))])
    rows += [["parameters", *[_num(m.get("parameters")) for _, m in models]],
             ["bytes on disk", *[_bytes(m.get("bytes")) for _, m in models]],
             ["FLOPs / sample", *[_num(m.get("flops_per_sample")) for _, m in models]]]
    for bs in (t.get("latency_ms") or {}):
        rows.append([f"latency p50 / p95 @ batch {bs}",
                     *[f"{_num((m.get('latency_ms') or {}).get(bs, {}).get('p50'))} / {_num((m.get('latency_ms') or {}).get(bs, {}).get('p95'))} ms"
                       for _, m in models]])
    ratios = [("compression ratio (teacher bytes / student bytes)", _num(r.get("compression_ratio"), "×")),
              ("parameter ratio", _num(r.get("parameter_ratio"), "×")),
              *[(f"speedup @ batch {k}", _num(v, "×")) for k, v in (r.get("speedup") or {}).items()],
              ("agreement with the teacher", _pct(r.get("agreement"))), ("mean KL(teacher ‖ student)", _num(r.get("mean_kl")))]
    if r.get("distillation_gain_points") is not None:
        ratios.append(("distillation gain (distilled − alone)", f"{r['distillation_gain_points']:+.2f} points"))
    if r.get("cache"):
        ratios.append(("teacher outputs cached", str(r["cache"].get("teacher_outputs"))))
    points = [(name, m.get("bytes"), m.get("val_top1")) for name, m in models]
    lat = {name: {f"batch {k}": v.get("p50") for k, v in (m.get("latency_ms") or {}).items()} for name, m in models if m.get("latency_ms")}
    return {"columns": [n for n, _ in models], "rows": rows, "ratios": ratios,
            "extra_plots": [plots.accuracy_vs_size(points), plots.latency_bars(lat)]}


def _text_view(r: dict[str, Any]) -> dict[str, Any]:
    t, s = r.get("teacher", {}), r.get("student", {})
    rows = [["layers", _num(t.get("layers")), _num(s.get("layers"))],
            ["parameters", _num(t.get("parameters")), _num(s.get("parameters"))],
            ["bytes", _bytes(t.get("bytes")), _bytes(s.get("bytes"))]]
    if r.get("task") == "sentence_embedding":
        rows.append(["linear-probe accuracy", _pct(r.get("probe_teacher")), _pct(r.get("probe_student"))])
    else:
        rows.append(["validation top-1", _pct(r.get("teacher_top1")), _pct(r.get("student_top1"))])
    tl, sl = (t.get("latency_ms") or {}).get("1", {}), (s.get("latency_ms") or {}).get("1", {})
    rows.append(["latency p50 / p95 per sentence", f"{_num(tl.get('p50'))} / {_num(tl.get('p95'))} ms",
                 f"{_num(sl.get('p50'))} / {_num(sl.get('p95'))} ms"])
    tput = {}
    for bs, v in (t.get("throughput_per_s") or {}).items():
        sv = (s.get("throughput_per_s") or {}).get(bs)
        rows.append([f"throughput @ batch {bs}", f"{_num(v)} /s", f"{_num(sv)} /s"])
        tput = {"teacher": {f"batch {bs}": v}, "student": {f"batch {bs}": sv}}
    ratios = [("mean cosine to the teacher", _num(r.get("mean_cosine"))), ("probe accuracy, student / teacher", _pct(r.get("probe_ratio"))),
              ("agreement", _pct(r.get("agreement"))), ("parameter ratio", _num(r.get("parameter_ratio"), "×")),
              *[(f"speedup ({k})", _num(v, "×")) for k, v in (r.get("speedup") or {}).items()]]
    return {"columns": ["teacher", "student"], "rows": rows, "ratios": [x for x in ratios if x[1] != "–"],
            "extra_plots": [plots.latency_bars(tput, unit="sentences / s", title="throughput")]}


def report_view(job_id: str, name: str | None, report: dict[str, Any], metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """What the template shows for one report: tables, ratios, plots (SVG strings), phases and the summary."""
    text = report.get("task") in ("sentence_embedding", "sequence_classification")
    view = _text_view(report) if text else _tensor_view(report)
    curves = plots.training_curves(metrics)
    return {"job_id": job_id, "name": name, "task": report.get("task", "classification"), "summary": report.get("summary", ""),
            "gain": report.get("distillation_gain_points"), "columns": view["columns"], "rows": view["rows"], "ratios": view["ratios"],
            "plots": [p for p in [curves, *view["extra_plots"]] if p],
            "phases": [(k, f"{v:.2f}") for k, v in (report.get("wall_time_s") or {}).items() if v is not None]}


def render_html(title: str, views: list[dict[str, Any]]) -> str:
    """The HTML page for ``views`` (from ``report_view``); every user-provided string is escaped."""
    return _env().get_template("report.html").render(title=title, reports=views)
