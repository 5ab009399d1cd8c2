/* mefts dashboard, view — Compare runs (#/diff?ids=1,2,3): the config fields that differ, overlaid loss and metric
   curves, and the memory of each run side by side. One global, named as the view. */
"use strict";

const Diff = (() => {
  const { $, el, state } = UI;

  /** The run ids of a `ids=1,2,3` parameter: positive integers, each once, in the order given. */
  function parseIds(text) {
    return [...new Set(String(text || "").split(",").map((s) => Number(s.trim())).filter((n) => Number.isInteger(n) && n > 0))];
  }

  /** Every config field (nested objects flattened to "a.b") whose value is not the same in all runs: [key, values]. */
  function configDiff(runs) {
    const flat = runs.map((r) => {
      const out = {};
      const walk = (prefix, v) => {
        if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length) {
          for (const [k, x] of Object.entries(v)) walk(prefix ? `${prefix}.${k}` : k, x);
        } else out[prefix] = JSON.stringify(v ?? null);
      };
      walk("", { ...r.config, method_label: r.method_label });
      return out;
    });
    const keys = [...new Set(flat.flatMap((f) => Object.keys(f)))].sort();
    // a field one run lacks counts as null, as in the API's config of an older run
    return keys.filter((k) => new Set(flat.map((f) => f[k] ?? "null")).size > 1)
      .map((k) => [k, flat.map((f) => JSON.parse(f[k] ?? "null") ?? "—")]);
  }

  let shown = 0;  // the newest show(): a selection changed while runs were loading draws only once, the newest
  async function show(params) {
    const seq = ++shown;
    const ids = parseIds(params.get("ids"));
    const box = $("diff-body");
    if (ids.length < 2) {
      box.replaceChildren(el("p", { class: "empty-state" }, "Pick two or more runs: tick them in the ",
        el("a", { href: "#/runs" }, "runs table"), " and press “Compare selected”."));
      box.dataset.rendered = "empty";
      return;
    }
    const [runs, metrics] = await Promise.all([Promise.all(ids.map((id) => Api.get(`/api/runs/${id}`))),
      Promise.all(ids.map((id) => Api.get(`/api/runs/${id}/metrics`)))]);
    if (seq !== shown) return;
    const names = runs.map((r) => `#${r.id} ${r.method_label} · ${r.backbone}`);
    const diff = configDiff(runs);
    box.replaceChildren(
      el("h2", { id: "diff-cfg-title" }, "Configuration: what differs"),
      diff.length ? el("div", { class: "table-wrap" }, el("table", { id: "diff-table", class: "data", "aria-labelledby": "diff-cfg-title" },
        el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "field"),
          ...runs.map((r) => el("th", { scope: "col" }, el("a", { href: `#/runs/${r.id}` }, `#${r.id}`))))),
        el("tbody", {}, diff.map(([k, vals]) => el("tr", { "data-key": k }, el("th", { scope: "row" }, k),
          ...vals.map((v) => el("td", {}, typeof v === "object" ? JSON.stringify(v) : String(v))))))))
        : el("p", { class: "note", id: "diff-table-none" }, "The runs have the same configuration."),
      el("h2", {}, "Curves"),
      el("div", { class: "grid-2" }, el("div", { id: "diff-loss", class: "chart" }), el("div", { id: "diff-metric", class: "chart" })),
      el("h2", {}, "Memory"),
      el("div", { id: "diff-mem", class: "chart" }));
    const series = metrics.map((m) => m.series || {});
    await Charts.overlayCurves($("diff-loss"), names, series, "loss");
    await Charts.overlayCurves($("diff-metric"), names, series, "metric");
    await Charts.memoryBars($("diff-mem"), names, runs.map((r) => r.memory));
    if (seq !== shown) return;
    box.dataset.rendered = String(runs.length);
  }

  /** The ids ticked in the runs table, kept across pages and views until cleared. */
  function selection() { return state.diffSelection || (state.diffSelection = new Set()); }

  return { show, parseIds, configDiff, selection };
})();
