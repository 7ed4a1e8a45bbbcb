// GRADIENT HEALTH: TensorBoard loads this module into the tab's iframe and
// calls `render()`. The page reads the plugin's routes (api.js) and draws
// four views of the selected runs: the verdicts in words, the depth profile,
// the layer x step heatmaps and report's per-layer tables.

import { Store } from "./api.js";
import { h } from "./dom.js";
import { runColor, runLabel, SIGNALS } from "./format.js";
import { drawHeatmaps, heatLegend } from "./heatmap.js";
import { followTheme, onDataReloaded } from "./host.js";
import { drawProfile } from "./profile.js";
import { drawSummary, drawTables } from "./verdicts.js";

// Runs selected when the page opens: enough to compare, few enough to read.
const DEFAULT_RUNS = 6;
const PROFILE_SIGNALS = [
  "grad_norm", "update_ratio", "activation_std", "weight_norm",
  "dead_relu_fraction", "saturated_fraction",
];
const HEAT_SIGNALS = ["grad_norm", "update_ratio", "activation_std", "weight_norm"];

function select(parent, options, value, onChange, label) {
  const wrap = h("label", { class: "control" }, parent);
  wrap.append(label);
  const node = h("select", {}, wrap);
  for (const key of options) {
    h("option", { value: key, text: SIGNALS[key].label, selected: key === value }, node);
  }
  node.addEventListener("change", () => onChange(node.value));
  return node;
}

function section(parent, id, title, help) {
  const node = h("section", { id }, parent);
  h("h2", { text: title }, node);
  if (help) h("p", { class: "help", text: help }, node);
  return node;
}

class App {
  constructor(root) {
    this.store = new Store();
    this.runs = [];
    this.selected = null; // the default selection until the user picks
    this.profileSignal = "grad_norm";
    this.heatSignal = "grad_norm";
    this.step = null; // null: each run's latest logged step
    this.showFirst = true;
    this.token = 0;
    this.open = new Set(); // "run\nlayer" of the table rows opened
    this.build(root);
  }

  build(root) {
    root.replaceChildren();
    const page = h("main", { class: "page" }, root);
    const top = h("header", { class: "top" }, page);
    h("h1", { text: "Gradient health" }, top);
    h("p", {
      class: "lede",
      text: "Per-layer signals logged by keras_fanin.GradientHealth, judged as " +
        "`keras-fanin report` judges them.",
    }, top);
    this.picker = h("div", { class: "run-picker", role: "group", "aria-label": "runs" }, top);

    this.summary = h("div", { id: "summary" }, section(page, "verdicts", "Verdicts"));

    const profile = section(
      page, "depth-profile", "Depth profile",
      "Each run's signal at every layer, input on the left: a line that falls " +
        "towards the input is a gradient that vanishes before it gets there.",
    );
    const controls = h("div", { class: "controls" }, profile);
    select(controls, PROFILE_SIGNALS, this.profileSignal, (v) => {
      this.profileSignal = v;
      this.draw();
    }, "signal ");
    const slider = h("label", { class: "control step-control" }, controls);
    slider.append("step ");
    this.slider = h("input", { type: "range", min: 0, max: 0, value: 0, "aria-label": "step" }, slider);
    this.stepLabel = h("span", { class: "step-label" }, slider);
    this.slider.addEventListener("input", () => {
      const i = Number(this.slider.value);
      this.step = i >= this.profileSteps.length - 1 ? null : this.profileSteps[i];
      this.drawProfile();
    });
    const first = h("label", { class: "control" }, controls);
    const box = h("input", { type: "checkbox", checked: this.showFirst }, first);
    first.append(" first logged step, dashed");
    box.addEventListener("change", () => {
      this.showFirst = box.checked;
      this.drawProfile();
    });
    this.profileLegend = h("div", { class: "legend" }, profile);
    this.profile = h("div", { id: "profile", class: "chart-box" }, profile);

    const heat = section(
      page, "heatmaps", "Layer × step",
      "One row per layer in forward order (input at the top), one column per " +
        "logged step; beside it the dead-ReLU or saturated fraction. Hover for values.",
    );
    const heatControls = h("div", { class: "controls" }, heat);
    select(heatControls, HEAT_SIGNALS, this.heatSignal, (v) => {
      this.heatSignal = v;
      this.draw();
    }, "signal ");
    heatLegend(heatControls);
    this.heatmaps = h("div", { id: "heatmap-list" }, heat);

    this.tables = h("div", { id: "tables" }, section(
      page, "per-layer", "Per layer",
      "keras-fanin report's table: each layer's latest values and the first step " +
        "each condition began. Click a row for its signals over the steps.",
    ));
    let resize = null;
    window.addEventListener("resize", () => {
      clearTimeout(resize);
      resize = setTimeout(() => this.draw(), 150);
    });
  }

  shown() {
    return this.runs.filter((r) => this.selected.has(r.run));
  }

  async start() {
    let data;
    try {
      data = await this.store.runs();
    } catch (error) {
      this.fail(this.summary, error);
      return;
    }
    this.runsData = data;
    this.runs = data.runs.map((r, i) => ({ ...r, label: runLabel(r.run), color: runColor(i) }));
    this.samples = data.samples;
    this.thresholds = data.thresholds;
    if (!this.userPicked) {
      this.selected = new Set(this.runs.slice(0, DEFAULT_RUNS).map((r) => r.run));
    }
    this.drawPicker();
    await this.draw();
  }

  // After TensorBoard reloads its data: read again, and draw again only if
  // the runs or their verdicts (steps, latest values) changed, keeping what
  // the reader opened and chose.
  async reload() {
    const store = new Store();
    try {
      const runs = await store.runs();
      const shown = runs.runs.map((r) => r.run).filter((run) => this.selected.has(run));
      const verdicts = await Promise.all(shown.map((run) => store.verdicts(run)));
      if (JSON.stringify([runs, verdicts]) === this.signature) return;
    } catch (error) {
      console.warn("gradient health: reload failed", error);
      return;
    }
    this.store = store;
    await this.start();
  }

  drawPicker() {
    this.picker.replaceChildren();
    if (!this.runs.length) {
      h("p", {
        class: "empty",
        text: "No GradientHealth logs here yet: attach keras_fanin.GradientHealth(log_dir) " +
          "to model.fit() and point TensorBoard at that log_dir (or a folder above it).",
      }, this.picker);
      return;
    }
    h("span", { class: "picker-title", text: "runs" }, this.picker);
    for (const run of this.runs) {
      const item = h("label", { class: "run-choice", title: run.run }, this.picker);
      const box = h("input", { type: "checkbox", checked: this.selected.has(run.run), dataset: { run: run.run } }, item);
      h("span", { class: "dot", style: `background:${run.color}` }, item);
      item.append(run.label);
      box.addEventListener("change", () => {
        this.userPicked = true;
        if (box.checked) this.selected.add(run.run);
        else this.selected.delete(run.run);
        this.draw();
      });
    }
  }

  fail(where, error) {
    console.error("gradient health:", error);
    where.replaceChildren(h("p", { class: "error", text: String(error.message ?? error) }));
  }

  async draw() {
    const token = ++this.token;
    delete document.body.dataset.drawn;
    const runs = this.shown();
    const all = (get) => Promise.all(runs.map((r) => get(r.run)));
    const into = (promise) => promise.then((values) => new Map(runs.map((r, i) => [r.run, values[i]])));
    const current = () => token === this.token;
    const store = this.store;
    const jobs = [
      into(all((run) => store.verdicts(run))).then((verdicts) => {
        if (!current()) return;
        drawSummary(this.summary, { runs, verdicts });
        drawTables(this.tables, { runs, verdicts, store, samples: this.samples, open: this.open });
        this.signature = JSON.stringify([this.runsData, runs.map((r) => verdicts.get(r.run))]);
      }).catch((error) => this.fail(this.summary, error)),
      into(all((run) => store.matrix(run, this.profileSignal))).then((matrices) => {
        if (!current()) return;
        this.profileMatrices = matrices;
        this.drawProfile();
      }).catch((error) => this.fail(this.profile, error)),
      Promise.all([
        into(all((run) => store.matrix(run, this.heatSignal))),
        into(all((run) => store.matrix(run, "fraction"))),
      ]).then(([left, right]) => {
        if (!current()) return;
        drawHeatmaps(this.heatmaps, {
          runs, left, right, signal: this.heatSignal, threshold: this.thresholds.dead,
        });
      }).catch((error) => this.fail(this.heatmaps, error)),
    ];
    await Promise.all(jobs);
    if (current()) {
      document.body.dataset.drawn = "true";
      window.gradientHealthDrawnAt = performance.now();
    }
  }

  drawProfile() {
    const runs = this.shown();
    const matrices = this.profileMatrices ?? new Map();
    const steps = new Set();
    for (const r of runs) for (const step of matrices.get(r.run)?.steps ?? []) steps.add(step);
    this.profileSteps = [...steps].sort((a, b) => a - b);
    const last = this.profileSteps.length - 1;
    const index = this.step === null ? last : Math.max(0, this.profileSteps.findLastIndex((s) => s <= this.step));
    this.slider.max = String(Math.max(last, 0));
    this.slider.value = String(Math.max(index, 0));
    const step = this.profileSteps[index] ?? 0;
    this.stepLabel.textContent = last < 0 ? "–" : `${step}${index === last ? " (latest)" : ""}`;
    drawProfile(this.profile, {
      runs, matrices, signal: this.profileSignal, step, showFirst: this.showFirst,
    });
    this.profileLegend.replaceChildren();
    const shownSteps = new Set();
    for (const r of runs) {
      const m = matrices.get(r.run);
      if (!m?.cols) continue;
      const item = h("span", { class: "legend-item", dataset: { run: r.run } }, this.profileLegend);
      h("span", { class: "legend-line", style: `border-color:${r.color}` }, item);
      item.append(r.label);
      shownSteps.add(`${m.steps[m.column(step)]} ${m.steps[0]}`);
    }
    if (shownSteps.size === 1) {
      const [at, first] = [...shownSteps][0].split(" ");
      const key = h("span", { class: "legend-item key" }, this.profileLegend);
      h("span", { class: "legend-line key-solid" }, key);
      key.append(`step ${at}`);
      if (this.showFirst && at !== first) {
        h("span", { class: "legend-line key-dashed" }, key);
        key.append(`first logged step, ${first}`);
      }
    } else {
      h("span", {
        class: "legend-item key muted",
        text: "solid: each run's last logged step at or before the slider's; dashed: its first",
      }, this.profileLegend);
    }
  }
}

export async function render() {
  const link = h("link", { rel: "stylesheet", href: new URL("style.css", import.meta.url).href }, document.head);
  await new Promise((resolve) => {
    link.onload = resolve;
    link.onerror = resolve;
  });
  followTheme();
  const app = new App(document.body);
  onDataReloaded(() => app.reload());
  await app.start();
}
