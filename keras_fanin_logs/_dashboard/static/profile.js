// The depth profile: one line per run across the layers in forward order, at
// the run's first logged step (dashed) and at the slider's step (solid).

import { cut, decades, h, hideTip, logLabel, logTicks, s, scale, showTip } from "./dom.js";
import { css, fmt, NONFINITE, SIGNALS, signalLabel } from "./format.js";

const HEIGHT = 360;
const MARGIN = { left: 64, right: 20, top: 24, bottom: 106 };

// Layer names in forward order across runs: the first run's order, then
// names only later runs have, each after the layer before it.
function axisLayers(matrices) {
  const order = [];
  for (const matrix of matrices) {
    let at = 0;
    for (const name of matrix.layers) {
      const i = order.indexOf(name);
      if (i >= 0) at = i + 1;
      else order.splice(at++, 0, name);
    }
  }
  return order;
}

// The points one run shows at one column: `{layer, value, tag}` per layer.
function points(matrix, col) {
  return matrix.layers.map((layer, row) => ({
    layer,
    row,
    tag: matrix.tags[row],
    value: matrix.at(row, col),
  }));
}

export function drawProfile(root, { runs, matrices, signal, step, showFirst }) {
  root.replaceChildren();
  const shown = runs.filter((r) => matrices.get(r.run)?.cols > 0);
  if (!shown.length) {
    h("p", { class: "empty", text: `No run logged ${SIGNALS[signal].label}.` }, root);
    return;
  }
  const log = SIGNALS[signal].log;
  const layers = axisLayers(shown.map((r) => matrices.get(r.run)));
  const lines = [];
  for (const r of shown) {
    const matrix = matrices.get(r.run);
    const col = matrix.column(step);
    if (showFirst && col !== 0) {
      lines.push({ ...r, step: matrix.steps[0], first: true, points: points(matrix, 0) });
    }
    lines.push({ ...r, step: matrix.steps[col], first: col === 0, points: points(matrix, col) });
  }
  const all = lines.flatMap((line) => line.points.map((p) => p.value));
  const [lo, hi] = log ? decades(all) ?? [-1, 0] : [0, 1];

  const width = Math.max(root.clientWidth || 900, 480);
  const svg = s("svg", {
    class: "chart profile-chart",
    width,
    height: HEIGHT,
    viewBox: `0 0 ${width} ${HEIGHT}`,
    role: "img",
    "aria-label": `${SIGNALS[signal].label} by layer`,
  }, root);
  const left = MARGIN.left;
  const right = width - MARGIN.right;
  const top = MARGIN.top;
  const bottom = HEIGHT - MARGIN.bottom;
  const step_ = layers.length > 1 ? (right - left) / (layers.length - 1) : 0;
  const x = (name) => left + layers.indexOf(name) * step_ + (layers.length > 1 ? 0 : (right - left) / 2);
  const y = scale(lo, hi, bottom, top, log);

  const grid = s("g", { class: "grid" }, svg);
  const ticks = log ? logTicks(lo, hi) : [0, 0.25, 0.5, 0.75, 1];
  for (const t of ticks) {
    const ty = log ? y(10 ** t) : y(t);
    s("line", { x1: left, x2: right, y1: ty, y2: ty, class: Number.isInteger(t) || !log ? "major" : "minor" }, grid);
    if (!log || Number.isInteger(Math.round(t * 1e6) / 1e6)) {
      s("text", { x: left - 6, y: ty, class: "tick y", text: log ? logLabel(t) : String(t) }, grid);
    }
  }
  s("text", {
    class: "axis-title",
    transform: `translate(14 ${(top + bottom) / 2}) rotate(-90)`,
    text: `${SIGNALS[signal].label}${log ? " (log)" : ""}`,
  }, svg);
  const every = Math.max(1, Math.ceil(layers.length / Math.max(1, (right - left) / 13)));
  layers.forEach((name, i) => {
    if (i % every && i !== layers.length - 1) return;
    const label = s("text", {
      class: "tick x layer-tick",
      transform: `translate(${x(name)} ${bottom + 24}) rotate(-50)`,
      text: cut(name, 16),
      dataset: { layer: name },
    }, grid);
    s("title", { text: name }, label);
  });
  s("text", { x: (left + right) / 2, y: HEIGHT - 6, class: "axis-title", text: "layer, in forward order (input on the left)" }, svg);

  // Values off the axis: 0 on a log scale sits on a floor below it, NaN or
  // inf on a ceiling above it, each with its own marker and label.
  const floor = bottom + 14;
  const ceiling = top - 10;
  const values = lines.flatMap((line) => line.points.map((p) => p.value));
  if (log && values.some((v) => v === 0)) {
    s("line", { x1: left, x2: right, y1: floor, y2: floor, class: "floor" }, grid);
    s("text", { x: left - 6, y: floor, class: "tick y", text: "0" }, grid);
  }
  if (values.some((v) => v !== null && !Number.isFinite(v))) {
    s("text", { x: left - 6, y: ceiling, class: "tick y nonfinite-label", text: "NaN/inf" }, grid);
  }
  const place = (v) => {
    if (v === null) return null;
    if (!Number.isFinite(v)) return { y: ceiling, kind: "nonfinite" };
    if (log && v <= 0) return { y: floor, kind: "zero" };
    return { y: y(v), kind: "value" };
  };

  const marks = s("g", { class: "marks" }, svg);
  for (const line of lines) {
    const dash = line.first && lines.some((l) => l.run === line.run && !l.first) ? "6 4" : null;
    let d = "";
    let pen = false;
    for (const p of line.points) {
      const at = place(p.value);
      if (!at || at.kind !== "value") {
        pen = false;
        continue;
      }
      d += `${pen ? "L" : "M"}${x(p.layer).toFixed(1)},${at.y.toFixed(1)}`;
      pen = true;
    }
    s("path", {
      d,
      class: "profile-line",
      stroke: line.color,
      "stroke-dasharray": dash,
      dataset: { run: line.run, step: line.step, first: line.first ? "1" : "0" },
    }, marks);
    for (const p of line.points) {
      const at = place(p.value);
      if (!at) continue;
      const cx = x(p.layer);
      const data = {
        run: line.run,
        layer: p.layer,
        step: String(line.step),
        value: String(p.value),
        first: dash ? "1" : "0",
      };
      let mark;
      if (at.kind === "value") {
        mark = s("circle", { cx, cy: at.y, r: 3.2, class: dash ? "pt hollow" : "pt", fill: line.color, stroke: line.color }, marks);
      } else if (at.kind === "zero") {
        mark = s("path", { d: `M${cx - 4},${at.y - 6}h8l-4,7z`, class: "pt zero", fill: "none", stroke: line.color }, marks);
      } else {
        mark = s("path", { d: `M${cx - 4},${at.y - 4}l8,8m0,-8l-8,8`, class: "pt nonfinite", stroke: css(NONFINITE) }, marks);
      }
      Object.assign(mark.dataset, data);
      mark.addEventListener("mousemove", (event) =>
        showTip(event, [
          `${line.label} — ${p.layer}`,
          `step ${line.step}${dash ? " (first logged)" : ""}`,
          `${signalLabel(signal, p.tag)}: ${fmt(p.value)}`,
        ], { ...data, shown: fmt(p.value) }),
      );
      mark.addEventListener("mouseleave", hideTip);
    }
  }
}
