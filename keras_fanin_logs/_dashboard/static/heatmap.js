// Layer x step heatmaps, one row of panels per run: the chosen signal on a
// log colour scale (viridis) beside the dead or saturated fraction (cividis).

import { cut, decades, h, hideTip, logLabel, logTicks, showTip } from "./dom.js";
import {
  CIVIDIS,
  css,
  fmt,
  lutColor,
  MISSING,
  NONFINITE,
  SIGNALS,
  signalLabel,
  VIRIDIS,
  ZERO,
} from "./format.js";

const LABEL_WIDTH = 120;
const BAR_WIDTH = 64;

function rowHeight(rows) {
  return Math.max(3, Math.min(14, Math.floor(420 / Math.max(rows, 1))));
}

// The colour of one value: the colour map inside [lo, hi], or one of the
// three colours outside it (NaN or inf, 0 on a log scale, not logged).
function painter(log, lo, hi, table) {
  return (value) => {
    if (value === null) return MISSING;
    if (!Number.isFinite(value)) return NONFINITE;
    if (log) {
      if (value <= 0) return ZERO;
      return lutColor(table, (Math.log10(value) - lo) / (hi - lo));
    }
    return lutColor(table, (value - lo) / (hi - lo));
  };
}

function paint(canvas, matrix, color) {
  canvas.width = Math.max(matrix.cols, 1);
  canvas.height = Math.max(matrix.rows, 1);
  const context = canvas.getContext("2d");
  const image = context.createImageData(canvas.width, canvas.height);
  const data = image.data;
  for (let r = 0; r < matrix.rows; r++) {
    for (let c = 0; c < matrix.cols; c++) {
      const rgb = color(matrix.at(r, c));
      const i = (r * canvas.width + c) * 4;
      data[i] = rgb[0];
      data[i + 1] = rgb[1];
      data[i + 2] = rgb[2];
      data[i + 3] = 255;
    }
  }
  context.putImageData(image, 0, 0);
}

function colorBar(parent, { log, lo, hi, table, height, threshold }) {
  const bar = h("div", { class: "colorbar", style: `height:${height}px` }, parent);
  const canvas = h("canvas", { width: 1, height: 128, style: `height:${height}px` }, bar);
  const context = canvas.getContext("2d");
  for (let i = 0; i < 128; i++) {
    context.fillStyle = css(lutColor(table, 1 - i / 127));
    context.fillRect(0, i, 1, 1);
  }
  const ticks = log ? logTicks(lo, hi, 5).filter((t) => Number.isInteger(Math.round(t * 1e6) / 1e6)) : [0, 0.5, 1];
  for (const t of ticks) {
    const top = height * (1 - (t - lo) / (hi - lo));
    h("span", { class: "bar-tick", style: `top:${top}px`, text: log ? logLabel(t) : String(t) }, bar);
  }
  if (threshold !== undefined) {
    const top = height * (1 - (threshold - lo) / (hi - lo));
    h("span", { class: "bar-threshold", style: `top:${top}px`, title: `threshold ${threshold}` }, bar);
  }
}

// Up to five step labels under a chart of one column per step.
export function stepAxis(parent, steps, attrs = {}) {
  const axis = h("div", { class: "step-axis", ...attrs }, parent);
  const n = steps.length;
  if (!n) return;
  const count = Math.min(n, 5);
  for (let k = 0; k < count; k++) {
    const c = count > 1 ? Math.round((k * (n - 1)) / (count - 1)) : 0;
    const left = ((c + 0.5) / n) * 100;
    h("span", { class: "step-tick", style: `left:${left}%`, text: String(steps[c]) }, axis);
  }
}

function panel(parent, { run, matrix, color, width, rh, signal, title }) {
  const box = h("div", { class: "heat-panel" }, parent);
  h("div", { class: "panel-title", text: title }, box);
  const canvas = h("canvas", {
    class: "heatmap",
    style: `width:${width}px;height:${matrix.rows * rh}px`,
    dataset: { run: run.run, signal, rows: matrix.rows, cols: matrix.cols },
  }, box);
  paint(canvas, matrix, color);
  canvas.addEventListener("mousemove", (event) => {
    const rect = canvas.getBoundingClientRect();
    const r = Math.floor(((event.clientY - rect.top) / rect.height) * matrix.rows);
    const c = Math.floor(((event.clientX - rect.left) / rect.width) * matrix.cols);
    if (r < 0 || c < 0 || r >= matrix.rows || c >= matrix.cols) return hideTip();
    const value = matrix.at(r, c);
    const layer = matrix.layers[r];
    const step = matrix.steps[c];
    const label = signalLabel(signal, matrix.tags[r]);
    showTip(event, [
      `${run.label} — ${layer}`,
      `step ${step}`,
      value === null ? `${label}: not logged` : `${label}: ${fmt(value)}`,
    ], {
      run: run.run,
      layer,
      step: String(step),
      signal,
      value: String(value),
      shown: value === null ? "" : fmt(value),
    });
  });
  canvas.addEventListener("mouseleave", hideTip);
  stepAxis(box, matrix.steps);
  return box;
}

export function heatLegend(parent) {
  const legend = h("div", { class: "swatches" }, parent);
  for (const [rgb, text] of [
    [NONFINITE, "NaN or inf"],
    [ZERO, "0 (no gradient, no update)"],
    [MISSING, "not logged"],
  ]) {
    const item = h("span", { class: "swatch-item" }, legend);
    h("span", { class: "swatch", style: `background:${css(rgb)}` }, item);
    item.append(text);
  }
  return legend;
}

export function drawHeatmaps(root, { runs, left, right, signal, threshold }) {
  root.replaceChildren();
  const shown = runs.filter((r) => left.get(r.run) || right.get(r.run));
  if (!shown.length) {
    h("p", { class: "empty", text: "No layer logged a signal yet." }, root);
    return;
  }
  // One colour scale for every run, so their colours compare.
  const values = [];
  for (const r of shown) {
    const m = left.get(r.run);
    if (!m) continue;
    for (let i = 0; i < m.values.length; i++) {
      if (m.present === null || m.present[i]) values.push(m.values[i]);
    }
  }
  const [lo, hi] = decades(values) ?? [-1, 0];
  const total = Math.max(root.clientWidth || 1000, 640);
  const width = Math.max(160, Math.floor((total - LABEL_WIDTH - 2 * BAR_WIDTH - 40) / 2));
  const leftColor = painter(true, lo, hi, VIRIDIS);
  const rightColor = painter(false, 0, 1, CIVIDIS);
  for (const run of shown) {
    const block = h("div", { class: "heat-run", dataset: { run: run.run } }, root);
    const title = h("div", { class: "run-title" }, block);
    h("span", { class: "dot", style: `background:${run.color}` }, title);
    title.append(run.label);
    const grid = h("div", { class: "heat-grid" }, block);
    const m = left.get(run.run) ?? right.get(run.run);
    const rh = rowHeight(m.rows);
    const column = h("div", { class: "layer-labels", style: `width:${LABEL_WIDTH}px` }, grid);
    h("div", { class: "panel-title", text: "\u00a0" }, column);
    const labels = h("div", { class: "layer-label-box" }, column);
    const every = Math.ceil(10 / rh);
    m.layers.forEach((name, r) => {
      h("span", {
        class: "layer-label",
        style: `top:${r * rh}px;height:${rh}px;line-height:${rh}px`,
        text: r % every === 0 ? cut(name, 18) : "",
        title: name,
        dataset: { layer: name },
      }, labels);
    });
    labels.style.height = `${m.rows * rh}px`;
    for (const [matrix, color, bar, title] of [
      [left.get(run.run), leftColor, { log: true, lo, hi, table: VIRIDIS },
        `${SIGNALS[signal].label} by layer and step (log colour scale)`],
      [right.get(run.run), rightColor, { log: false, lo: 0, hi: 1, table: CIVIDIS, threshold },
        `dead-ReLU or saturated fraction (threshold ${threshold})`],
    ]) {
      if (!matrix?.tags.some((tag) => tag)) {
        h("div", { class: "heat-panel empty", style: `width:${width}px`, text: `${title}: not logged` }, grid);
        continue;
      }
      panel(grid, { run, matrix, color, width, rh, signal: matrix.signal, title });
      colorBar(grid, { ...bar, height: matrix.rows * rh });
    }
  }
}
