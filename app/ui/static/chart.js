// A small SVG line chart for the dashboard (no library: the page needs lines, axes and a legend, nothing more).
// lineChart(container, series, options)
//   series:  [{name, color, points: [[x, y], ...]}]   (x ascending; points with non-finite y are skipped)
//   options: {xLabel, yLabel, yMin, yMax, percent}     (percent: y in 0..1 shown as %)
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

// About n round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten).
function niceTicks(lo, hi, n) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / Math.max(1, n);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
  return ticks;
}

function fmt(v, percent) {
  if (percent) return (100 * v).toFixed(Math.abs(v) < 0.1 ? 1 : 0) + "%";
  const a = Math.abs(v);
  if (a !== 0 && (a < 0.01 || a >= 1e5)) return v.toExponential(1);
  return +v.toPrecision(3) + "";
}

function lineChart(container, series, options) {
  const opt = options || {};
  container.replaceChildren();
  container.classList.add("chart");
  const drawn = series.map(s => ({...s, points: s.points.filter(p => Number.isFinite(p[0]) && Number.isFinite(p[1]))}))
                      .filter(s => s.points.length > 0);
  if (!drawn.length) {
    const empty = document.createElement("div");
    empty.className = "empty";
    empty.textContent = opt.emptyText || "no values yet";
    container.append(empty);
    return;
  }
  const W = 560, H = 240, L = 52, R = 12, T = 10, B = 34;
  const xs = drawn.flatMap(s => s.points.map(p => p[0]));
  const ys = drawn.flatMap(s => s.points.map(p => p[1]));
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x1 === x0) { x1 = x0 + 1; }
  let y0 = opt.yMin !== undefined ? opt.yMin : Math.min(...ys);
  let y1 = opt.yMax !== undefined ? opt.yMax : Math.max(...ys);
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const pad = opt.yMin === undefined ? (y1 - y0) * 0.05 : 0;
  y0 -= pad; y1 += opt.yMax === undefined ? (y1 - y0) * 0.05 : 0;
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);

  const svg = svgEl("svg", {viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opt.label || "chart"});
  for (const t of niceTicks(y0, y1, 5)) {
    svg.append(svgEl("line", {x1: L, x2: W - R, y1: sy(t), y2: sy(t), stroke: "#e5e9ed"}));
    const lab = svgEl("text", {x: L - 6, y: sy(t) + 4, "text-anchor": "end", "font-size": 11, fill: "#66707a"});
    lab.textContent = fmt(t, opt.percent);
    svg.append(lab);
  }
  for (const t of niceTicks(x0, x1, 6)) {
    if (opt.integerX && !Number.isInteger(t)) continue;
    svg.append(svgEl("line", {x1: sx(t), x2: sx(t), y1: H - B, y2: H - B + 4, stroke: "#9aa4ad"}));
    const lab = svgEl("text", {x: sx(t), y: H - B + 16, "text-anchor": "middle", "font-size": 11, fill: "#66707a"});
    lab.textContent = fmt(t, false);
    svg.append(lab);
  }
  svg.append(svgEl("line", {x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#9aa4ad"}));
  svg.append(svgEl("line", {x1: L, x2: L, y1: T, y2: H - B, stroke: "#9aa4ad"}));
  if (opt.xLabel) {
    const t = svgEl("text", {x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", "font-size": 11, fill: "#66707a"});
    t.textContent = opt.xLabel;
    svg.append(t);
  }
  for (const s of drawn) {
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    const path = svgEl("path", {d, fill: "none", stroke: s.color, "stroke-width": 1.8, "data-series": s.name});
    svg.append(path);
    if (s.points.length <= 60) {
      for (const p of s.points) svg.append(svgEl("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 2.4, fill: s.color}));
    }
  }
  container.append(svg);
  const legend = document.createElement("div");
  legend.className = "legend";
  for (const s of drawn) {
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = s.color;
    const last = s.points[s.points.length - 1][1];
    item.append(swatch, `${s.name} (${fmt(last, opt.percent)})`);
    legend.append(item);
  }
  container.append(legend);
}

window.lineChart = lineChart;
