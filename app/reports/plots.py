"""Plots of a report as inline SVG (matplotlib, Agg backend): training curves, accuracy vs size, latency."""

from __future__ import annotations

import functools
import io
from types import ModuleType
from typing import Any


@functools.cache
def _pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend, imported on the first plot rather than when the API starts (0.56 s of
    its start-up and about 30 MiB of resident memory, for a module only the HTML report and the sweep page use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    _pyplot().close(fig)
    text = buf.getvalue()
    return text[text.find("<svg"):]


def training_curves(metrics: list[dict[str, Any]]) -> str | None:
    """Loss terms (epoch means) and validation top-1 / cosine / agreement per epoch, as SVG; None without rows."""
    loss: dict[str, dict[int, float]] = {}
    val: dict[str, dict[int, float]] = {}
    for m in metrics:
        if m["name"].startswith("loss/") and m["split"] in ("train_epoch", "baseline_train_epoch"):
            label = m["name"][5:] + (" (baseline)" if m["split"].startswith("baseline") else "")
            loss.setdefault(label, {})[m["epoch"]] = m["value"]
        elif m["split"] in ("val", "baseline_val") and m["name"] in ("top1", "cosine", "agreement"):
            label = m["name"] + (" (baseline)" if m["split"].startswith("baseline") else "")
            val.setdefault(label, {})[m["epoch"]] = m["value"]
    if not loss and not val:
        return None
    fig, axes = _pyplot().subplots(1, 2, figsize=(10, 3.4))
    for name, series in sorted(loss.items()):
        xs = sorted(series)
        axes[0].plot(xs, [series[x] for x in xs], marker=".", label=name)
    axes[0].set(title="loss terms per epoch", xlabel="epoch", ylabel="loss")
    for name, series in sorted(val.items()):
        xs = sorted(series)
        axes[1].plot(xs, [series[x] for x in xs], marker=".", label=name)
    axes[1].set(title="validation per epoch", xlabel="epoch", ylabel="fraction")
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _svg(fig)


def accuracy_vs_size(points: list[tuple[str, float, float]]) -> str | None:
    """Scatter of (label, bytes, top-1) for teacher / baseline / student / quantised student, as SVG."""
    points = [p for p in points if p[1] and p[2] is not None]
    if not points:
        return None
    fig, ax = _pyplot().subplots(figsize=(5, 3.4))
    for label, size, acc in points:
        ax.scatter(size / 1024, 100 * acc, s=40)
        ax.annotate(label, (size / 1024, 100 * acc), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set(title="accuracy vs size", xlabel="size on disk (KiB, log)", ylabel="validation top-1 (%)")
    ax.grid(alpha=0.3)
    return _svg(fig)


def latency_bars(series: dict[str, dict[str, float]], unit: str = "ms", title: str = "latency p50") -> str | None:
    """Grouped bars: for each key (e.g. 'batch 1') a bar per model ({model: {key: value}}), as SVG."""
    keys = sorted({k for v in series.values() for k in v}, key=lambda k: (len(k), k))
    if not keys:
        return None
    fig, ax = _pyplot().subplots(figsize=(5, 3.4))
    width = 0.8 / max(1, len(series))
    for i, (model, vals) in enumerate(series.items()):
        xs = [j + i * width for j in range(len(keys))]
        ax.bar(xs, [vals.get(k, 0) or 0 for k in keys], width=width, label=model)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(keys))], keys)
    values = [v for vals in series.values() for v in vals.values() if v]
    if values and max(values) / min(values) > 20:  # a teacher 30x slower would flatten every student bar
        ax.set_yscale("log")
        unit += " (log)"
    ax.set(title=title, ylabel=unit)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _svg(fig)


def sweep_front(trials: list[tuple[float, float, int, bool]], teacher: tuple[float, float, int] | None, batch: int) -> str | None:
    """A sweep's trials as quality vs latency, SVG: each (latency p50 ms, top-1 fraction, bytes, on the front) a point
    sized by bytes, front members joined and coloured, the teacher (latency, top-1, bytes) as a star."""
    pts = [p for p in trials if p[0] is not None and p[1] is not None]
    if not pts:
        return None
    fig, ax = _pyplot().subplots(figsize=(6.5, 4))
    biggest = max([p[2] for p in pts] + ([teacher[2]] if teacher else []))
    size = lambda b: 20 + 400 * (b / biggest) ** 0.5  # noqa: E731 - marker area grows with the square root of bytes
    others = [p for p in pts if not p[3]]
    front = sorted([p for p in pts if p[3]])
    if others:
        ax.scatter([p[0] for p in others], [100 * p[1] for p in others], s=[size(p[2]) for p in others], c="#bbbbbb",
                   label="trial (selection split)", alpha=0.7)
    if front:
        ax.plot([p[0] for p in front], [100 * p[1] for p in front], c="#1f77b4", lw=1, alpha=0.6)
        ax.scatter([p[0] for p in front], [100 * p[1] for p in front], s=[size(p[2]) for p in front], c="#1f77b4",
                   label="front (held-out validation)")
        for p in front:
            ax.annotate(f"{p[2] / 1024:,.0f} KiB", (p[0], 100 * p[1]), textcoords="offset points", xytext=(6, -10), fontsize=7)
    if teacher and teacher[0] is not None and teacher[1] is not None:
        ax.scatter([teacher[0]], [100 * teacher[1]], marker="*", s=250, c="#d62728", label=f"teacher ({teacher[2] / 1024:,.0f} KiB)")
    ax.set_xscale("log")
    ax.set(title="sweep: quality vs latency (marker area ~ bytes)", xlabel=f"p50 latency at batch {batch} (ms, log)",
           ylabel="top-1 (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _svg(fig)
