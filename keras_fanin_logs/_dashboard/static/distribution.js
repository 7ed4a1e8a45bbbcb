// One layer's distribution over the steps (GradientHealth(histograms=k)): a
// bin x step heatmap of the share of the layer's values in each octave bin,
// positive values at the top, zero in the middle, negative at the bottom.

import { h, hideTip, showTip } from "./dom.js";
import { css, fmt, lutColor, VIRIDIS } from "./format.js";
import { stepAxis } from "./heatmap.js";

const NAMES = { grad_hist: "gradient", weight_hist: "weights", update_hist: "update" };
// Shares below this get the colour map's darkest colour: one value in 10^4.
const LOWEST = -4;
// An empty bin: a shade of the page's background, light or dark.
function empty() {
  return document.documentElement.dataset.theme === "dark" ? [52, 52, 56] : [238, 238, 238];
}

// A bin's axis label: the power of ten it holds ("1e-3", "-0.1"), "0" for
// the zero bin, the range of an under- or overflow bin; "" for the others.
function binLabel(edges, bin, zero) {
  if (bin === zero) return "0";
  const last = edges.length - 2;
  const [a, b] = [edges[bin], edges[bin + 1]];
  if (bin === 0) return `< ${fmt(b)}`;
  if (bin === last) return `≥ ${fmt(a)}`;
  if (bin === zero - 1) return `(${fmt(a)}, 0)`;
  if (bin === zero + 1) return `(0, ${fmt(b)})`;
  const [lo, hi] = bin > zero ? [a, b] : [-b, -a];
  const k = Math.ceil(Math.log10(lo) - 1e-9);
  if (10 ** k >= hi) return "";
  const text = k >= -2 && k <= 4 ? String(10 ** k) : `1e${k}`;
  return bin > zero ? text : `-${text}`;
}

function paint(canvas, counts, rows) {
  const cols = counts.length;
  const blank = empty();
  canvas.width = Math.max(cols, 1);
  canvas.height = Math.max(rows, 1);
  const context = canvas.getContext("2d");
  const image = context.createImageData(canvas.width, canvas.height);
  for (let c = 0; c < cols; c++) {
    const total = counts[c].reduce((a, b) => a + b, 0);
    for (let r = 0; r < rows; r++) {
      const n = counts[c][rows - 1 - r];
      const rgb = n === 0 || total === 0
        ? blank
        : lutColor(VIRIDIS, (Math.log10(n / total) - LOWEST) / -LOWEST);
      const i = (r * canvas.width + c) * 4;
      image.data.set([rgb[0], rgb[1], rgb[2], 255], i);
    }
  }
  context.putImageData(image, 0, 0);
}

function heatmap(parent, data, signal, width) {
  parent.replaceChildren();
  const series = data.signals[signal];
  const rows = series.counts[0]?.length ?? 0;
  if (!rows) {
    h("p", { class: "muted", text: `${NAMES[signal]}: every bin empty` }, parent);
    return;
  }
  const rh = Math.max(4, Math.min(10, Math.floor(300 / rows)));
  const grid = h("div", { class: "dist-grid" }, parent);
  const labels = h("div", { class: "dist-labels", style: `height:${rows * rh}px` }, grid);
  // Labelled rows at least 11 px apart, the zero bin first.
  const order = [...Array(rows).keys()].sort((p, q) =>
    (series.first + rows - 1 - q === data.zero_bin) - (series.first + rows - 1 - p === data.zero_bin));
  const taken = [];
  for (const r of order) {
    const bin = series.first + rows - 1 - r;
    const text = binLabel(data.edges, bin, data.zero_bin);
    if (!text || taken.some((t) => Math.abs(t - r) * rh < 11)) continue;
    taken.push(r);
    h("span", {
      class: "dist-label",
      style: `top:${r * rh + rh / 2 - 6}px;height:12px;line-height:12px`,
      text,
    }, labels);
  }
  const canvas = h("canvas", {
    class: "distribution",
    style: `width:${width}px;height:${rows * rh}px`,
    dataset: { signal, rows, cols: series.steps.length },
  }, grid);
  paint(canvas, series.counts, rows);
  canvas.addEventListener("mousemove", (event) => {
    const rect = canvas.getBoundingClientRect();
    const r = Math.floor(((event.clientY - rect.top) / rect.height) * rows);
    const c = Math.floor(((event.clientX - rect.left) / rect.width) * series.steps.length);
    if (r < 0 || c < 0 || r >= rows || c >= series.steps.length) return hideTip();
    const bin = series.first + rows - 1 - r;
    const n = series.counts[c][rows - 1 - r];
    const total = series.counts[c].reduce((a, b) => a + b, 0);
    const range = bin === data.zero_bin
      ? "0 and subnormals"
      : `[${fmt(data.edges[bin])}, ${fmt(data.edges[bin + 1])})`;
    showTip(event, [
      `${data.layer}: ${NAMES[signal]}`,
      `step ${series.steps[c]}`,
      `${range}: ${n} of ${total} (${fmt(total ? n / total : 0)})`,
    ], { step: String(series.steps[c]), bin: String(bin), count: String(n), signal });
  });
  canvas.addEventListener("mouseleave", hideTip);
  stepAxis(parent, series.steps, { style: `width:${width}px` });
}

export function drawDistribution(parent, data, width) {
  const signals = Object.keys(NAMES).filter((s) => data.signals[s]?.steps.length);
  if (!signals.length) return;
  const box = h("div", { class: "dist-box", dataset: { layer: data.layer } }, parent);
  h("div", { class: "chart-title", text: `${data.layer}: distribution over steps (share of values per octave bin)` }, box);
  const top = h("div", { class: "controls" }, box);
  let current = signals[0];
  const body = h("div", {}, box);
  for (const signal of signals) {
    const label = h("label", { class: "control" }, top);
    const radio = h("input", { type: "radio", name: `dist-${data.layer}`, value: signal, checked: signal === current }, label);
    label.append(` ${NAMES[signal]}`);
    radio.addEventListener("change", () => {
      current = signal;
      heatmap(body, data, current, width);
    });
  }
  const key = h("div", { class: "swatches" }, box);
  const bar = h("span", { class: "dist-bar" }, key);
  bar.style.background = `linear-gradient(to right, ${[0, 0.25, 0.5, 0.75, 1].map((t) => css(lutColor(VIRIDIS, t))).join(",")})`;
  key.append(` share: 10^${LOWEST} to 1 (log);`);
  const none = h("span", { class: "swatch", style: `background:${css(empty())}` }, key);
  none.title = "no value";
  key.append(" none");
  heatmap(body, data, current, width);
}
