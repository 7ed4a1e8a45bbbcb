// The plugin's routes, fetched relative to this module (so TensorBoard's
// path prefix and experiment id carry over), each answer kept per reload.

const BASE = new URL(".", import.meta.url);

export async function getJSON(route, params = {}) {
  const url = new URL(route, BASE);
  for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
  const response = await fetch(url);
  if (!response.ok) {
    throw new Error(`${route}: ${response.status} ${await response.text()}`);
  }
  return response.json();
}

// JSON numbers as report --json writes them: NaN and infinities are strings.
export function num(value) {
  if (value === null || value === undefined) return null;
  if (typeof value === "number") return value;
  return { nan: NaN, inf: Infinity, "-inf": -Infinity }[value] ?? Number(value);
}

function bytes(base64) {
  const text = atob(base64);
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

// A layers x steps matrix: float32 values (NaN and inf as written) and a
// byte per cell saying whether the layer logged that step (null: all did).
export class Matrix {
  constructor(data) {
    this.signal = data.signal;
    this.layers = data.layers;
    this.tags = data.tags;
    this.steps = data.steps;
    this.rows = data.layers.length;
    this.cols = data.steps.length;
    // Little-endian float32, as every browser's platform stores them.
    this.values = new Float32Array(bytes(data.values).buffer);
    this.present = data.present === null ? null : bytes(data.present);
  }

  has(row, col) {
    return this.present === null || this.present[row * this.cols + col] === 1;
  }

  at(row, col) {
    return this.has(row, col) ? this.values[row * this.cols + col] : null;
  }

  // The last column at or before `step` (the first column if none is).
  column(step) {
    let lo = 0;
    let hi = this.cols - 1;
    if (hi < 0) return -1;
    if (this.steps[0] > step) return 0;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.steps[mid] <= step) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }
}

export class Store {
  constructor() {
    this.cache = new Map();
  }

  clear() {
    this.cache.clear();
  }

  _once(key, load) {
    if (!this.cache.has(key)) {
      const promise = load();
      promise.catch(() => this.cache.delete(key));
      this.cache.set(key, promise);
    }
    return this.cache.get(key);
  }

  runs() {
    return this._once("runs", () => getJSON("runs"));
  }

  verdicts(run) {
    return this._once(`verdicts\n${run}`, () => getJSON("verdicts", { run }));
  }

  matrix(run, signal) {
    return this._once(`matrix\n${run}\n${signal}`, async () =>
      new Matrix(await getJSON("matrix", { run, signal })),
    );
  }

  layer(run, layer) {
    return this._once(`layer\n${run}\n${layer}`, () => getJSON("layer", { run, layer }));
  }

  distribution(run, layer) {
    return this._once(`distribution\n${run}\n${layer}`, () => getJSON("distribution", { run, layer }));
  }
}
