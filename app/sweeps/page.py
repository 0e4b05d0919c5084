"""The HTML page of a sweep: its status, the front plotted (quality vs latency, size as the marker) beside the
teacher, and the front and trials as tables."""

from __future__ import annotations

from jinja2 import Environment, select_autoescape

from app.reports.plots import sweep_front
from app.sweeps.schemas import FrontObject, SweepObject, TrialObject

_TEMPLATE = Environment(autoescape=select_autoescape(default=True, default_for_string=True)).from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sweep {{ s.id }}</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ddd;padding:.3em .6em;font-size:.9em;text-align:right}th{background:#f4f4f4}td.l{text-align:left}</style>
</head><body>
<h1>sweep {{ s.name or s.id }}</h1>
<p>{{ s.status }}{% if s.stop_reason %} ({{ s.stop_reason }}){% endif %}: {{ s.trials.created }} of {{ s.trials.max_trials }} trials
created, {{ s.trials.succeeded }} succeeded, {{ s.trials.running }} running, {{ s.trials.queued }} queued, {{ s.trials.failed }} failed,
{{ s.trials.cancelled }} cancelled.</p>
{% if plot %}<figure>{{ plot | safe }}</figure>{% endif %}
<h2>front{% if not f.final %} (so far){% endif %}</h2>
<p>Chosen on a selection split carved from the training rows; top-1 below is on the untouched validation split, with 95% Wilson intervals.</p>
<table><tr><th>trial</th><th class="l">params</th><th>val top-1</th><th>95% interval</th><th>selection top-1</th><th>bytes</th>
<th>p50 ms (batch {{ batch }})</th><th class="l">student</th></tr>
{% if f.teacher %}<tr><td>teacher</td><td class="l"></td><td>{{ pct(f.teacher.val_top1) }}</td><td>{{ ci(f.teacher.interval95) }}</td><td></td>
<td>{{ "{:,}".format(f.teacher.bytes or 0) }}</td><td>{{ lat(f.teacher.latency_ms) }}</td><td></td></tr>{% endif %}
{% for m in f.data %}<tr><td>{{ m.trial }}</td><td class="l">{{ m.params }}</td><td>{{ pct((m.holdout or {}).student_val_top1) }}</td>
<td>{{ ci((m.holdout or {}).student_interval95) }}</td><td>{{ pct(m.selection_top1) }}</td><td>{{ "{:,}".format(m.bytes or 0) }}</td>
<td>{{ lat(m.latency_ms) }}</td><td class="l"><a href="{{ m.student_artifact }}">student.safetensors</a></td></tr>{% endfor %}
</table>
<h2>trials</h2>
<table><tr><th>trial</th><th class="l">job</th><th class="l">status</th><th class="l">params</th><th class="l">scores (selection split)</th>
<th>training s</th><th class="l">teacher outputs</th></tr>
{% for t in trials %}<tr><td>{{ t.number }}</td><td class="l"><a href="/v1/jobs/{{ t.job_id }}/report.html">{{ t.job_id }}</a></td>
<td class="l">{{ t.status }}</td><td class="l">{{ t.params }}</td><td class="l">{{ t.scores or "" }}</td><td>{{ t.training_time_s or "" }}</td>
<td class="l">{{ t.teacher_outputs or "" }}</td></tr>{% endfor %}
</table></body></html>""")


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def _ci(v: list[float] | None) -> str:
    return "–" if not v else f"{100 * v[0]:.1f}–{100 * v[1]:.1f}%"


def render(sweep: SweepObject, front: FrontObject, trials: list[TrialObject]) -> str:
    """The page (HTML text, self-contained: inline SVG, no scripts)."""
    lat_objs = [o for o in sweep.spec.objectives if o.name == "latency_p50_ms"]
    batch = lat_objs[0].batch_size if lat_objs else 1

    def lat(block: dict | None) -> str:
        v = ((block or {}).get(str(batch)) or {}).get("p50")
        return "–" if v is None else f"{v:.3f}"

    on_front = {m.trial: m for m in front.data}
    points = []
    for m in front.data:
        p50 = ((m.latency_ms or {}).get(str(batch)) or {}).get("p50")
        points.append((p50, (m.holdout or {}).get("student_val_top1") or m.selection_top1, m.bytes or 0, True))
    for t in trials:
        if t.number in on_front or not t.scores:
            continue
        p50 = t.scores.get(f"latency_p50_ms@{batch}")
        points.append((p50, t.scores.get("top1"), int(t.scores.get("bytes") or 0), False))
    teacher = None
    if front.teacher:
        teacher = (((front.teacher.get("latency_ms") or {}).get(str(batch)) or {}).get("p50"), front.teacher.get("val_top1"),
                   front.teacher.get("bytes") or 0)
    plot = sweep_front(points, teacher, batch) if all(p[0] is not None for p in points) and points else None
    return _TEMPLATE.render(s=sweep, f=front, trials=trials, plot=plot, batch=batch, pct=_pct, ci=_ci, lat=lat)
