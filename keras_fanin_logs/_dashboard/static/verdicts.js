// What `keras-fanin report` says, per run: the summary lines at the top of
// the page and the per-layer table (a click on a row draws its series).

import { num } from "./api.js";
import { h } from "./dom.js";
import { fmt, fmtStep } from "./format.js";
import { drawDistribution } from "./distribution.js";
import { drawSeries } from "./series.js";

const BADGES = {
  nonfinite: "NaN / inf",
  exploding: "exploding",
  vanishing: "vanishing",
  dead: "dead layers",
  saturated: "saturated",
};

export function drawSummary(root, { runs, verdicts }) {
  root.replaceChildren();
  for (const run of runs) {
    const v = verdicts.get(run.run);
    if (!v) continue;
    const worst = v.problems[0]?.kind ?? "ok";
    const line = h("div", { class: `summary-run ${worst === "ok" ? "ok" : "sick"}`, dataset: { run: run.run, verdict: worst } }, root);
    const head = h("div", { class: "summary-head" }, line);
    h("span", { class: "dot", style: `background:${run.color}` }, head);
    h("span", { class: "run-name", text: run.label }, head);
    for (const kind of new Set(v.problems.map((p) => p.kind))) {
      h("span", { class: `badge ${kind}`, text: BADGES[kind] }, head);
    }
    if (!v.problems.length) h("span", { class: "badge ok", text: "healthy" }, head);
    const body = h("ul", { class: "summary-lines" }, line);
    for (const problem of v.problems) {
      h("li", { class: `problem ${problem.kind}`, text: problem.text, dataset: { kind: problem.kind } }, body);
    }
    if (!v.problems.length) {
      let text = "no vanishing or exploding gradients, no dead or saturated layer, no NaN or inf";
      const d = v.depth;
      if (d?.start) {
        text += `; ${d.first}'s grad norm is ${fmt(num(d.start.ratio))}x ${d.last}'s at step ${d.start.step}`;
        if (d.end && d.end.step !== d.start.step) text += `, ${fmt(num(d.end.ratio))}x at step ${d.end.step}`;
      }
      h("li", { class: "healthy", text }, body);
    }
    const count = v.warnings.length;
    h("li", {
      class: "warning-count",
      text: count ? `${count} warning${count > 1 ? "s" : ""} raised (in the table below)` : "no warnings raised",
    }, body);
  }
}

const COLUMNS = [
  ["layer", "layer"],
  ["activation", "activation"],
  ["grad_norm", "grad norm"],
  ["update_ratio", "update ratio"],
  ["fraction", "dead / sat."],
  ["crossed", "crossed at"],
  ["nonfinite", "non-finite at"],
];

function layerRow(layer) {
  const fraction = layer.dead_fraction ?? layer.saturated_fraction;
  const crossed = layer.first_dead_step ?? layer.first_saturated_step;
  return {
    layer: [layer.name, null],
    activation: [layer.activation ?? "", null],
    grad_norm: [fmt(num(layer.grad_norm)), layer.grad_norm],
    update_ratio: [fmt(num(layer.update_ratio)), layer.update_ratio],
    fraction: [fmt(num(fraction)), fraction],
    crossed: [fmtStep(crossed), crossed],
    nonfinite: [fmtStep(layer.first_nonfinite_step), layer.first_nonfinite_step],
  };
}

export function drawTables(root, { runs, verdicts, store, samples, open }) {
  root.replaceChildren();
  for (const run of runs) {
    const v = verdicts.get(run.run);
    if (!v) continue;
    const section = h("details", { class: "verdict-run", open: true, dataset: { run: run.run } }, root);
    const summary = h("summary", {}, section);
    h("span", { class: "dot", style: `background:${run.color}` }, summary);
    h("span", { class: "run-name", text: run.label }, summary);
    const span = v.logged_steps
      ? `steps ${v.first_step} to ${v.last_step} (${v.logged_steps} logged)`
      : "no steps logged";
    const loss = num(v.probe_loss);
    h("span", { class: "muted", text: ` ${span}${loss !== null ? `, probe loss ${fmt(loss)}` : ""}` }, summary);
    for (const text of v.verdicts) h("p", { class: "verdict-line", text }, section);
    if (samples && v.logged_steps >= samples) {
      h("p", {
        class: "note",
        text: `TensorBoard keeps ${samples} points of each series (its --samples_per_plugin ` +
          "scalars=0 keeps every one): the steps here are among those kept; " +
          "keras-fanin report reads them all.",
      }, section);
    }
    const table = h("table", { class: "verdict-table" }, section);
    const header = h("tr", {}, h("thead", {}, table));
    for (const [, title] of COLUMNS) h("th", { text: title }, header);
    const tbody = h("tbody", {}, table);
    for (const layer of v.layers) {
      const cells = layerRow(layer);
      const flags = [
        num(layer.grad_norm) === 0 && "no-gradient",
        layer.first_nonfinite_step !== null && "nonfinite",
        layer.first_dead_step !== null && "dead",
        layer.first_saturated_step !== null && "saturated",
      ].filter(Boolean);
      const tr = h("tr", {
        class: `layer-row ${flags.join(" ")}`,
        tabindex: 0,
        title: "click: this layer's signals over the steps",
        dataset: { layer: layer.name },
      }, tbody);
      for (const [key] of COLUMNS) {
        const [text, raw] = cells[key];
        h("td", {
          class: key,
          text,
          dataset: raw === null || raw === undefined ? { col: key } : { col: key, value: String(raw) },
        }, tr);
      }
      const key = `${run.run}\n${layer.name}`;
      const show = async () => {
        const detail = h("tr", { class: "series-detail", dataset: { layer: layer.name } });
        tr.after(detail);
        const cell = h("td", { colspan: COLUMNS.length }, detail);
        h("p", { class: "muted", text: "loading…" }, cell);
        const [data, distribution] = await Promise.all([
          store.layer(run.run, layer.name),
          store.distribution(run.run, layer.name),
        ]);
        drawSeries(cell, data, section.clientWidth - 40, v.thresholds);
        drawDistribution(cell, distribution, Math.min(section.clientWidth - 140, 900));
      };
      const toggle = () => {
        const next = tr.nextElementSibling;
        if (next?.classList.contains("series-detail")) {
          next.remove();
          open.delete(key);
        } else {
          open.add(key);
          show();
        }
      };
      tr.addEventListener("click", toggle);
      tr.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          toggle();
        }
      });
      if (open.has(key)) show();
    }
    const notes = h("p", { class: "note" }, section);
    notes.textContent =
      `update ratio: ||w_after - w_before|| / ||w_before||. crossed at: the first step with a ` +
      `dead-ReLU fraction over ${v.thresholds.dead} or a saturated fraction over ` +
      `${v.thresholds.saturated}. vanishing / exploding: the first over the last kernel ` +
      `layer's grad norm beyond ${v.thresholds.depth_ratio}x.`;
    const warnings = h("details", { class: "warnings", open: v.warnings.length <= 5 }, section);
    h("summary", { text: v.warnings.length ? `warnings (${v.warnings.length})` : "warnings: none" }, warnings);
    const list = h("ul", {}, warnings);
    for (const w of v.warnings) {
      const item = h("li", {}, list);
      h("span", { class: "step", text: `step ${w.step}: ` }, item);
      item.append(w.text);
    }
  }
}
