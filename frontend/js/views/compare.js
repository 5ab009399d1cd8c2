/* mefts dashboard, view — Compare: the results table and charts of methods across backbones and tasks. One global, named as the view. */
"use strict";

const Compare = (() => {
  const { $, el, state, flash, guard, debounce, parseHash, navigate, downloads } = UI;

  const opts = () => {
    const x = $("cmp-x").value;
    // the pivot shows the memory measure on the x axis, or the peak activation (the paper's measure) if x is not one
    return { task: $("cmp-task").value, x, y: $("cmp-y").value, color: $("cmp-color").value, log: $("cmp-log").checked,
      frontAll: $("cmp-front-all").checked, select: $("cmp-select").value, mem: Charts.MEMORY[x] ? x : "peak_act" };
  };
  const AXES = { x: "peak_act", y: "score", color: "" };  // the defaults, and the URL parameters behind the selects

  let pending = null;  // a results request started before the catalog arrived
  function prefetch(select) {
    const request = Api.get("/api/results", { select });
    request.catch(() => {});  // handled where it is awaited; this keeps an early failure from being "uncaught"
    pending = { select, request };
  }

  async function load(select) {
    const early = pending && pending.select === select ? pending.request : null;
    pending = null;
    const data = await (early || Api.get("/api/results", { select }));
    state.compare = { rows: bySource(data.rows), select, stale: false };
  }

  /** Runs on different data (hub splits, the packaged copy, local files) are never compared in one chart: a task
      with results on several sources is listed once per source ("sst2 · hub"); `api_task` keeps the API's name. */
  function bySource(rows) {
    const sources = {};
    rows.forEach((r) => (sources[r.task] ||= new Set()).add(r.data_source));
    return rows.map((r) => ({ ...r, api_task: r.task,
      task: sources[r.task].size > 1 ? `${r.task} · ${r.data_source}` : r.task }));
  }

  function syncHash() {
    const o = opts();
    const q = new URLSearchParams({ task: o.task, x: o.x, y: o.y, select: o.select });
    if (o.color) q.set("color", o.color);
    if (o.log) q.set("log", "1");
    if (o.frontAll) q.set("front", "all");
    history.replaceState(null, "", `#/compare?${q}`);
  }

  let shown = 0;  // the newest show(): an older one whose results arrive later must not draw over it
  async function show(params) {
    const seq = ++shown;
    for (const [axis, fallback] of Object.entries(AXES)) {
      // "mem" is the x axis's older name in shared links
      const v = params.get(axis) ?? (axis === "x" ? params.get("mem") : null) ?? fallback;
      $(`cmp-${axis}`).value = Charts.METRICS[v] || v === "" ? v : fallback;
    }
    if (params.has("select")) $("cmp-select").value = params.get("select");
    $("cmp-log").checked = params.get("log") === "1";
    $("cmp-front-all").checked = params.get("front") === "all";
    const select = $("cmp-select").value;
    if (state.compare.stale || state.compare.select !== select) await load(select);
    if (seq !== shown) return;
    const rows = state.compare.rows;
    const counts = {};
    rows.forEach((r) => { counts[r.task] = (counts[r.task] || 0) + 1; });
    const tasks = Object.keys(counts).sort((a, b) => counts[b] - counts[a] || a.localeCompare(b));
    const wanted = params.get("task") || $("cmp-task").value;
    $("cmp-task").replaceChildren(...tasks.map((t) => el("option", { value: t }, `${t} (${counts[t]})`)));
    if (tasks.includes(wanted)) $("cmp-task").value = wanted;
    await render();
    if (seq !== shown) return;
    await renderBench();
  }

  /** Memory vs depth / sequence length from GET /api/bench (rows stored by `mefts bench-import`). */
  async function renderBench() {
    const box = $("bench-curves");
    const data = await Api.get("/api/bench");
    const rows = data.rows || [];
    if (!rows.length) { box.dataset.rendered = "empty"; return; }
    if (!box.querySelector(".bench-chart")) {
      box.classList.remove("empty-state");
      box.replaceChildren(
        el("p", { class: "note" }, "Peak memory of one training step measured by mefts bench (stored with mefts " +
          "bench-import), one line per method and backbone at a fixed batch and other axis."),
        el("div", { id: "bench-depth", class: "chart bench-chart", role: "img", "aria-label": "Peak memory against depth" }),
        el("div", { id: "bench-seq", class: "chart bench-chart", role: "img", "aria-label": "Peak memory against sequence length" }),
        el("p", { id: "bench-note", class: "note" }));
    }
    const nDepth = await Charts.benchCurves($("bench-depth"), rows, "layers");
    const nSeq = await Charts.benchCurves($("bench-seq"), rows, "seq_len");
    $("bench-depth").hidden = !nDepth;
    $("bench-seq").hidden = !nSeq;
    $("bench-note").textContent = `${rows.length} benchmark row${rows.length === 1 ? "" : "s"}; ` +
      `${nDepth} depth curve${nDepth === 1 ? "" : "s"}, ${nSeq} sequence-length curve${nSeq === 1 ? "" : "s"}` +
      (nDepth + nSeq ? "." : " (a curve needs two or more depths or lengths at otherwise equal settings).");
    box.dataset.rendered = String(nDepth + nSeq);
  }

  async function render() {
    const o = opts();
    const rows = (state.compare.rows || []).filter((r) => r.task === o.task);
    const scatterDiv = $("scatter");
    if (!rows.length) {
      if (window.Plotly) window.Plotly.purge(scatterDiv);
      scatterDiv.replaceChildren(el("div", { class: "empty-state" },
        el("p", {}, el("strong", {}, "No results yet. "), "Points appear here when runs succeed: one per method and " +
          "backbone, averaged over seeds."), el("p", {}, el("a", { href: "#/submit" }, "Submit a run or a sweep"))));
      $("scatter-note").textContent = "";
      $("pivot").replaceChildren();
      $("pivot-downloads").replaceChildren();
      scatterDiv.dataset.rendered = "empty";
      return;
    }
    if (scatterDiv.querySelector(".empty-state")) scatterDiv.replaceChildren();
    const drawn = await Charts.scatter(scatterDiv, rows, { x: o.x, y: o.y, color: o.color, frontAll: o.frontAll,
      log: o.log, onPoint: (ids, ev) => {
        if (!ids.length) return;
        if (!(ev && (ev.shiftKey || ev.ctrlKey || ev.metaKey))) { navigate(`#/runs/${ids[0]}`); return; }
        ids.forEach((id) => Diff.selection().add(id));  // shift-click: pick the point's runs for Compare runs
        const all = [...Diff.selection()].sort((a, b) => a - b);
        flash(`${all.length} run${all.length === 1 ? "" : "s"} picked. `, "info", ["Compare them", `#/diff?ids=${all.join(",")}`]);
      } });
    scatterDiv.dataset.rendered = String(drawn.shown);
    scatterDiv.dataset.fronts = JSON.stringify(drawn.fronts);  // what the page drew, for tests and scripts
    performance.mark("mefts:scatter");  // read by bench/page_load.py
    const named = [o.x, o.y].map((k) => Charts.METRICS[k].label.toLowerCase()).join(" or ");
    $("scatter-note").textContent = `${drawn.shown} point${drawn.shown === 1 ? "" : "s"} on ${o.task}` +
      (drawn.hidden ? `; ${drawn.hidden} without a measured ${named} not shown` : "") +
      `. Pareto front${o.frontAll ? " over all backbones" : "s per backbone"}. Click a point to open its run; ` +
      "shift-click points to pick their runs for Compare runs.";
    renderPivot(rows, o);
  }

  function renderPivot(rows, o) {
    const p = Charts.pivot(rows, o.mem);
    const m = Charts.MEMORY[o.mem];
    const head = el("tr", {}, el("th", { scope: "col" }, "Method"), ...p.backbones.map((b) => el("th", { scope: "col" }, b)));
    const body = p.methods.map((method) => el("tr", {}, el("th", { scope: "row" }, method), ...p.backbones.map((b) => {
      const r = p.cells[method] && p.cells[method][b];
      if (!r) return el("td", { class: "na" }, "—");
      const isBest = p.best[b].has(r);
      const s = Charts.saving(r, rows, o.mem);
      const ids = JSON.parse(r.run_ids || "[]");
      return el("td", { class: isBest ? "best" : null, title: `runs ${ids.map((i) => `#${i}`).join(", ")}` },
        el("div", { class: "score" }, Api.fmtPm(r.score_mean, r.score_std), isBest ? el("span", { class: "star", "aria-label": "best" }, " ★") : ""),
        el("div", { class: "mem" }, Api.fmtBytes(r[m.mean]) || "no memory"),
        r.step_seconds_mean ? el("div", { class: "speed" }, `${Charts.fmtMetric("step", r)}/step · ` +
          `${Charts.fmtMetric("tps", r)} tok/s`) : "",
        method !== "full" && s !== null ? el("div", { class: `saving ${s > 0 ? "good" : "bad"}` }, `${Api.fmtSaving(s)} ${m.short} vs full`) : "",
        el("div", { class: "n" }, `n=${r.n}`));
    })));
    $("pivot").replaceChildren(el("caption", {}, `${o.task}: ${rows[0].main_metric} (%) and ${m.label.toLowerCase()}`),
      el("thead", {}, head), el("tbody", {}, body));
    const q = Api.query({ task: rows[0].api_task, select: o.select });
    downloads($("pivot-downloads"), { stem: `pivot-${o.task}`, local: async () => ({ columns: p.columns, rows: p.flat }) });
    const api = el("span", { class: "dl-extra" }, " · full results table: ",
      ...["csv", "json", "md", "tex"].map((f) => el("a", { href: `/api/results.${f}${q}`, download: `results.${f}`, class: "dl" }, f.toUpperCase())));
    $("pivot-downloads").append(api);
  }

  function init() {
    // the axis and colour choices are Charts.METRICS, the one list (colour may also be the method: value "")
    for (const id of ["cmp-x", "cmp-y", "cmp-color"]) {
      $(id).append(...Object.entries(Charts.METRICS).map(([k, m]) => el("option", { value: k }, m.label.toLowerCase())));
    }
    ["cmp-task", "cmp-x", "cmp-y", "cmp-color", "cmp-log", "cmp-front-all", "cmp-select"].forEach((id) => $(id).addEventListener("change", guard(async () => {
      syncHash();
      if ($("cmp-select").value !== state.compare.select) await show(parseHash().params);
      else await render();
    })));
  }

  const refresh = debounce(guard(async () => {
    state.compare.stale = true;
    if (state.view === "compare") await show(parseHash().params);
  }), 800);

  return { show, init, refresh, prefetch };
})();
