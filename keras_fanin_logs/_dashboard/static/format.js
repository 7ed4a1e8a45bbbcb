// Numbers, names and colours: one home for how the dashboard shows them.

// Four significant figures: what the tables and tooltips show.
export function fmt(value) {
  if (value === null || value === undefined) return "–";
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "inf";
  if (value === -Infinity) return "-inf";
  if (value === 0) return "0";
  const size = Math.abs(value);
  if (size >= 1e-3 && size < 1e5) return String(Number(value.toPrecision(4)));
  return value.toExponential(3).replace("e+", "e");
}

export function fmtStep(step) {
  return step === null || step === undefined ? "–" : String(step);
}

// "LeCun · probe" for "LeCun/gradient_health/probe"; "train" alone.
export function runLabel(run) {
  const parts = run.split("/");
  if (parts.length >= 2 && parts[parts.length - 2] === "gradient_health") {
    const prefix = parts.slice(0, -2).join("/");
    const kind = parts[parts.length - 1];
    return prefix ? `${prefix} · ${kind}` : kind;
  }
  return run;
}

export const SIGNALS = {
  grad_norm: { label: "grad norm", log: true },
  update_ratio: { label: "update ratio", log: true },
  activation_std: { label: "activation std", log: true },
  weight_norm: { label: "weight norm", log: true },
  dead_relu_fraction: { label: "dead ReLU fraction", log: false },
  saturated_fraction: { label: "saturated fraction", log: false },
  fraction: { label: "dead or saturated fraction", log: false },
};

export function signalLabel(signal, tag) {
  if (tag && signal in { fraction: 1, saturated_fraction: 1 }) {
    const kind = tag.split("/")[0];
    return {
      dead_relu_fraction: "dead ReLU fraction",
      saturated_sigmoid_fraction: "saturated sigmoid fraction",
      saturated_tanh_fraction: "saturated tanh fraction",
    }[kind] ?? SIGNALS[signal].label;
  }
  return SIGNALS[signal]?.label ?? signal;
}

// Okabe & Ito's colour-blind-safe palette, readable on light and dark.
const RUN_COLORS = [
  "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#f0e442",
];

export function runColor(index) {
  return RUN_COLORS[index % RUN_COLORS.length];
}

// NaN or inf, exact zero and "not logged": outside both colour maps.
export const NONFINITE = [255, 0, 255];
export const ZERO = [0, 0, 0];
export const MISSING = [158, 158, 158];

export function css(rgb) {
  return `rgb(${rgb.join(",")})`;
}

function lut(anchors) {
  const rgb = anchors.map((hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)));
  const table = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const x = (i / 255) * (rgb.length - 1);
    const k = Math.min(Math.floor(x), rgb.length - 2);
    const t = x - k;
    for (let c = 0; c < 3; c++) {
      table[i * 3 + c] = Math.round(rgb[k][c] * (1 - t) + rgb[k + 1][c] * t);
    }
  }
  return table;
}

// matplotlib's viridis and cividis at 17 evenly spaced points.
export const VIRIDIS = lut([
  "#440154", "#48186a", "#472d7b", "#424086", "#3b528b", "#33638d", "#2c728e",
  "#26828e", "#21918c", "#1fa088", "#28ae80", "#3fbc73", "#5ec962", "#84d44b",
  "#addc30", "#d8e219", "#fde725",
]);
export const CIVIDIS = lut([
  "#00224e", "#002e6a", "#1a386f", "#32436d", "#434e6c", "#535a6d", "#61656f",
  "#6f7073", "#7d7c78", "#8c8878", "#9b9476", "#aba072", "#bcae6c", "#cdbb63",
  "#dec958", "#f0d846", "#fee838",
]);

export function lutColor(table, t) {
  const i = Math.max(0, Math.min(255, Math.round(t * 255))) * 3;
  return [table[i], table[i + 1], table[i + 2]];
}
