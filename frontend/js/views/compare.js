/* mefts dashboard, view — Compare: the results table and charts of methods across backbones and tasks. One global, named as the view. */
"use strict";

const Compare = (() => {
  const { $, el, state, guard, debounce, parseHash, navigate, downloads } = UI;

  const opts = () => ({ task: $("cmp-task").value, mem: $("cmp-mem").value, log: $("cmp-log").checked,
    select: $("cmp-select").value });

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
    const q = new URLSearchParams({ task: o.task, mem: o.mem, select: o.select });
    if (o.log) q.set("log", "1");
    history.replaceState(null, "", `#/compare?${q}`);
  }

  async function show(params) {
    if (params.has("mem")) $("cmp-mem").value = params.get("mem");
    if (params.has("select")) $("cmp-select").value = params.get("select");
    $("cmp-log").checked = params.get("log") === "1";
    const select = $("cmp-select").value;
    if (state.compare.stale || state.compare.select !== select) await load(select);
    const rows = state.compare.rows;
    const counts = {};
    rows.forEach((r) => { counts[r.task] = (counts[r.task] || 0) + 1; });
    const tasks = Object.keys(counts).sort((a, b) => counts[b] - counts[a] || a.localeCompare(b));
    const wanted = params.get("task") || $("cmp-task").value;
    $("cmp-task").replaceChildren(...tasks.map((t) => el("option", { value: t }, `${t} (${counts[t]})`)));
    if (tasks.includes(wanted)) $("cmp-task").value = wanted;
    await render();
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
    const { shown, hidden } = await Charts.scatter(scatterDiv, rows, { memKey: o.mem, log: o.log,
      onPoint: (ids) => ids.length && navigate(`#/runs/${ids[0]}`) });
    scatterDiv.dataset.rendered = String(shown);
    performance.mark("mefts:scatter");  // read by bench/page_load.py
    $("scatter-note").textContent = `${shown} point${shown === 1 ? "" : "s"} on ${o.task}` +
      (hidden ? `; ${hidden} without a ${Charts.MEMORY[o.mem].label.toLowerCase()} measurement or score not shown` : "") +
      ". Click a point to open its run.";
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
    ["cmp-task", "cmp-mem", "cmp-log", "cmp-select"].forEach((id) => $(id).addEventListener("change", guard(async () => {
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
