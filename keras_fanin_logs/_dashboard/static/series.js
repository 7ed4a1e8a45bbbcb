// One layer's signals over the steps: a log chart of the norms and ratios,
// and a linear one of its dead or saturated fraction with the threshold.

import { decades, h, hideTip, logLabel, logTicks, s, scale, showTip } from "./dom.js";
import { css, fmt, NONFINITE } from "./format.js";
import { num } from "./api.js";

const LOG_SIGNALS = [
  ["grad_norm", "grad norm", "#0072b2"],
  ["update_ratio", "update ratio", "#d55e00"],
  ["weight_norm", "weight norm", "#009e73"],
  ["activation_std", "activation std", "#cc79a7"],
];
const FRACTIONS = [
  ["dead_relu_fraction", "dead ReLU fraction"],
  ["saturated_sigmoid_fraction", "saturated sigmoid fraction"],
  ["saturated_tanh_fraction", "saturated tanh fraction"],
];

function chart(parent, { lines, log, width, height, title, threshold }) {
  const margin = { left: 58, right: 12, top: 20, bottom: 28 };
  const svg = s("svg", { class: "chart series-chart", width, height, viewBox: `0 0 ${width} ${height}` }, parent);
  const steps = lines.flatMap((l) => l.steps);
  const x0 = Math.min(...steps);
  const x1 = Math.max(...steps);
  const [lo, hi] = log ? decades(lines.flatMap((l) => l.values)) ?? [-1, 0] : [0, 1];
  const x = scale(x0, x1 === x0 ? x0 + 1 : x1, margin.left, width - margin.right);
  const y = scale(lo, hi, height - margin.bottom, margin.top, log);
  const grid = s("g", { class: "grid" }, svg);
  for (const t of log ? logTicks(lo, hi, 6) : [0, 0.5, 1]) {
    const ty = log ? y(10 ** t) : y(t);
    s("line", { x1: margin.left, x2: width - margin.right, y1: ty, y2: ty, class: "major" }, grid);
    if (!log || Number.isInteger(Math.round(t * 1e6) / 1e6)) {
      s("text", { x: margin.left - 6, y: ty, class: "tick y", text: log ? logLabel(t) : String(t) }, grid);
    }
  }
  for (const k of [0, 0.5, 1]) {
    const step = Math.round(x0 + k * (x1 - x0));
    s("text", { x: x(step), y: height - 8, class: "tick x-mid", text: String(step) }, grid);
  }
  s("text", { x: (margin.left + width - margin.right) / 2 + 60, y: height - 8, class: "axis-title", text: "step" }, svg);
  s("text", { x: margin.left, y: 12, class: "chart-title", text: title }, svg);
  if (threshold !== undefined) {
    s("line", { x1: margin.left, x2: width - margin.right, y1: y(threshold), y2: y(threshold), class: "threshold" }, svg);
  }
  const floor = height - margin.bottom + 3;
  for (const line of lines) {
    let d = "";
    let pen = false;
    line.steps.forEach((step, i) => {
      const v = line.values[i];
      const px = x(step);
      if (!Number.isFinite(v)) {
        s("path", { d: `M${px - 3},${margin.top - 7}l6,6m0,-6l-6,6`, stroke: css(NONFINITE), class: "nonfinite-mark" }, svg);
        pen = false;
        return;
      }
      const py = log && v <= 0 ? floor : y(v);
      d += `${pen ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`;
      pen = !(log && v <= 0);
    });
    s("path", { d, class: "series-line", stroke: line.color, dataset: { signal: line.signal } }, svg);
  }
  // One hover target over the plot: the nearest logged step's values.
  const hover = s("rect", {
    x: margin.left, y: margin.top, width: width - margin.left - margin.right,
    height: height - margin.top - margin.bottom, class: "hover-area",
  }, svg);
  hover.addEventListener("mousemove", (event) => {
    const rect = hover.getBoundingClientRect();
    const at = x0 + ((event.clientX - rect.left) / rect.width) * (x1 - x0);
    const rows = [];
    let shownStep = null;
    for (const line of lines) {
      let best = 0;
      line.steps.forEach((step, i) => {
        if (Math.abs(step - at) < Math.abs(line.steps[best] - at)) best = i;
      });
      shownStep = line.steps[best];
      rows.push(`${line.label}: ${fmt(line.values[best])}`);
    }
    showTip(event, [`step ${shownStep}`, ...rows], { step: String(shownStep) });
  });
  hover.addEventListener("mouseleave", hideTip);
  const legend = h("div", { class: "legend small" }, parent);
  for (const line of lines) {
    const item = h("span", { class: "legend-item" }, legend);
    h("span", { class: "legend-line", style: `border-color:${line.color}` }, item);
    item.append(line.label);
  }
}

export function drawSeries(parent, data, width, thresholds) {
  parent.replaceChildren();
  const signals = data.signals;
  const series = (key) => ({
    steps: signals[key].steps,
    values: signals[key].values.map(num),
  });
  const logLines = LOG_SIGNALS.filter(([key]) => key in signals).map(([key, label, color]) => ({
    signal: key, label, color, ...series(key),
  }));
  const row = h("div", { class: "series-row" }, parent);
  if (logLines.length) {
    chart(h("div", {}, row), {
      lines: logLines, log: true, width: Math.min(width, 640), height: 220,
      title: `${data.layer}: norms and ratios over steps (log)`,
    });
  }
  const fraction = FRACTIONS.find(([key]) => key in signals);
  if (fraction) {
    const dead = fraction[0] === "dead_relu_fraction";
    chart(h("div", {}, row), {
      lines: [{ signal: fraction[0], label: fraction[1], color: "#e69f00", ...series(fraction[0]) }],
      log: false, width: Math.min(width, 420), height: 220,
      threshold: dead ? thresholds.dead : thresholds.saturated,
      title: `${data.layer}: ${fraction[1]}`,
    });
  }
}
