// DOM and SVG building blocks shared by the views: elements, scales, ticks,
// the one tooltip.

const SVG_NS = "http://www.w3.org/2000/svg";

function set(node, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  return node;
}

export function h(tag, attrs = {}, parent = null) {
  const node = set(document.createElement(tag), attrs);
  if (parent) parent.appendChild(node);
  return node;
}

export function s(tag, attrs = {}, parent = null) {
  const node = set(document.createElementNS(SVG_NS, tag), attrs);
  if (parent) parent.appendChild(node);
  return node;
}

// Maps [lo, hi] onto [a, b]; on a log scale lo and hi are log10 values.
export function scale(lo, hi, a, b, log = false) {
  const span = hi - lo || 1;
  return (value) => a + (((log ? Math.log10(value) : value) - lo) / span) * (b - a);
}

// Log10 bounds of the positive finite values (whole decades), or null.
export function decades(values) {
  let min = Infinity;
  let max = -Infinity;
  for (const v of values) {
    if (v > 0 && Number.isFinite(v)) {
      if (v < min) min = v;
      if (v > max) max = v;
    }
  }
  if (min === Infinity) return null;
  const lo = Math.floor(Math.log10(min));
  return [lo, Math.max(Math.ceil(Math.log10(max)), lo + 1)];
}

// Tick positions (log10 values) of a log axis: every decade, thinned to at
// most `most`; 2 and 5 between them when the axis spans few decades.
export function logTicks(lo, hi, most = 8) {
  const ticks = [];
  const every = Math.max(1, Math.ceil((hi - lo) / most));
  for (let d = lo; d <= hi; d += every) ticks.push(d);
  if (hi - lo <= 2) {
    for (let d = lo; d < hi; d++) ticks.push(d + Math.log10(2), d + Math.log10(5));
  }
  return ticks.sort((x, y) => x - y);
}

export function logLabel(exponent) {
  const value = 10 ** exponent;
  if (Number.isInteger(Math.round(exponent * 1e6) / 1e6) && (exponent < -2 || exponent > 3)) {
    return `1e${Math.round(exponent)}`;
  }
  return String(Number(value.toPrecision(2)));
}

// The dashboard's one tooltip: `show` writes its lines and data attributes.
let tip = null;

export function tooltip() {
  if (!tip) tip = h("div", { class: "tooltip", role: "tooltip", hidden: true }, document.body);
  return tip;
}

export function showTip(event, lines, data = {}) {
  const node = tooltip();
  node.replaceChildren(...lines.map((line, i) => h("div", { class: i ? "" : "tip-title", text: line })));
  for (const key of Object.keys(node.dataset)) delete node.dataset[key];
  Object.assign(node.dataset, data);
  node.hidden = false;
  const pad = 14;
  const { innerWidth, innerHeight } = window;
  const box = node.getBoundingClientRect();
  let x = event.clientX + pad;
  let y = event.clientY + pad;
  if (x + box.width > innerWidth) x = Math.max(0, event.clientX - box.width - pad);
  if (y + box.height > innerHeight) y = Math.max(0, event.clientY - box.height - pad);
  node.style.left = `${x + window.scrollX}px`;
  node.style.top = `${y + window.scrollY}px`;
}

export function hideTip() {
  if (tip) tip.hidden = true;
}

// "relu_1" stays; "model/block_12/very_long_dense_name" keeps both ends.
export function cut(text, width) {
  if (text.length <= width) return text;
  const head = Math.floor((width - 1) / 2);
  return `${text.slice(0, head)}…${text.slice(text.length - (width - 1 - head))}`;
}
