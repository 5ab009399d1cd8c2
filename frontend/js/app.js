/* mefts dashboard: views (compare, runs, submit, run detail), routing by URL hash, live updates.
   Every action is an API call (see /docs); the views only read and post what the API serves. */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  /** el("a", {href: "#"}, "text", child...): a DOM element; attributes starting with "on" become listeners. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  const state = {
    catalog: null,
    system: null,
    view: null,
    runs: { sort: "-id", limit: 50, offset: 0, filters: {}, byId: new Map(), page: null, seq: 0 },
    compare: { rows: null, select: null, stale: true },
    detail: { id: null, run: null },
    clone: null,
  };

  // ---------------------------------------------------------------------------------------------- small helpers
  let flashTimer = null;
  function flash(text, kind = "info", link = null) {
    const box = $("flash");
    box.replaceChildren(el("span", {}, text), link ? el("a", { href: link[1] }, link[0]) : "",
      el("button", { type: "button", class: "close", "aria-label": "Dismiss", onclick: () => { box.hidden = true; } }, "×"));
    box.className = `flash ${kind}`;
    box.hidden = false;
    clearTimeout(flashTimer);
    if (kind !== "error") flashTimer = setTimeout(() => { box.hidden = true; }, 8000);
  }

  /** Run an async action; an error becomes a flash message (never an unhandled rejection). */
  const guard = (fn) => (...args) => Promise.resolve().then(() => fn(...args)).catch((e) => {
    flash(e instanceof Api.ApiError ? `Request failed: ${e.message}` : String(e && e.message ? e.message : e), "error");
  });

  function debounce(fn, ms) {
    let t = null;
    return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
  }

  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, "");
    const [path, q] = raw.split("?");
    return { parts: (path || "compare").split("/").filter(Boolean), params: new URLSearchParams(q || "") };
  }

  function navigate(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  }

  /** Download links: the API's export where it has one, else a table built here. */
  function downloads(box, { api = {}, local = null, stem }) {
    const names = { csv: "CSV", json: "JSON", md: "Markdown", tex: "LaTeX" };
    box.replaceChildren(el("span", { class: "dl-label" }, "Download:"), ...Object.keys(names).map((fmt) => {
      if (api[fmt]) return el("a", { href: api[fmt], download: `${stem}.${fmt}`, class: "dl", "data-fmt": fmt }, names[fmt]);
      if (!local) return null;
      return el("button", { type: "button", class: "dl", "data-fmt": fmt, onclick: guard(async () => {
        const { columns, rows } = await local();
        Api.saveTable(columns, rows, fmt, stem);
      }) }, names[fmt]);
    }));
  }

  const STATUS_TEXT = { does_not_fit: "does not fit" };
  const badge = (status) => el("span", { class: `badge status-${status}` }, STATUS_TEXT[status] || status);

  // ---------------------------------------------------------------------------------------------- routing
  const VIEWS = ["compare", "runs", "submit", "run"];

  function showView(name) {
    for (const v of VIEWS) $(`view-${v}`).hidden = v !== name;
    document.querySelectorAll("nav a[data-view]").forEach((a) => {
      const on = a.dataset.view === name || (name === "run" && a.dataset.view === "runs");
      if (on) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    });
    state.view = name;
    // Plotly skips resizing charts while their view is hidden: fit them to the window now.
    if (window.Plotly) guard(() => Charts.resize($(`view-${name}`)))();
  }

  function routeNow() {
    const { parts, params } = parseHash();
    if (parts[0] === "runs" && parts[1]) { showView("run"); return Detail.show(Number(parts[1])); }
    if (parts[0] === "runs") { showView("runs"); return Runs.show(params); }
    if (parts[0] === "submit") { showView("submit"); return Submit.show(params); }
    showView("compare");
    return Compare.show(params);
  }

  /** Show the view the URL hash names; errors become flash messages. */
  function route() { return guard(routeNow)(); }

  // ================================================================================================ Compare
  const Compare = (() => {
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
      state.compare = { rows: data.rows, select, stale: false };
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
      const q = Api.query({ task: o.task, select: o.select });
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

  // ================================================================================================ Runs
  const Runs = (() => {
    const COLS = [
      { key: "id", label: "Run", sort: "id" },
      { key: "method_label", label: "Method", sort: "method_label" },
      { key: "backbone", label: "Backbone", sort: "backbone" },
      { key: "task", label: "Task", sort: "task" },
      { key: "seed", label: "Seed", sort: "seed", opt: true },
      { key: "batch_size", label: "Batch", sort: "batch_size", opt: true },
      { key: "max_seq_len", label: "Seq", sort: "max_seq_len", opt: true },
      { key: "learning_rate", label: "LR", sort: "learning_rate", opt: true },
      { key: "status", label: "Status", sort: "status" },
      { key: "score", label: "Score", sort: "score" },
      { key: "stored_activation_bytes", label: "Stored act.", sort: "stored_activation_bytes" },
      { key: "peak_bytes", label: "Peak", sort: "peak_bytes", opt: true },
      { key: "created_at", label: "Created", sort: "created_at", opt: true },
      { key: "duration_seconds", label: "Duration", opt: true },
      { key: "actions", label: "Actions" },
    ];
    const FILTERS = ["status", "method", "backbone", "task"];

    function reasonOf(r) {
      if (r.status === "queued") {
        const q = state.system && state.system.queued.find((x) => x.id === r.id);
        return q ? `#${q.position} in queue: ${q.reason}` : "queued";
      }
      if (r.status === "running") {
        if (r.cancel_requested) return "cancelling…";
        const parts = [];
        if (r.step !== null && r.total_steps) parts.push(`step ${r.step}/${r.total_steps}`);
        if (r.epoch !== null && r.epoch !== undefined) parts.push(`epoch ${r.epoch}`);
        if (r.loss !== null && r.loss !== undefined) parts.push(`loss ${r.loss.toFixed(4)}`);
        return parts.join(" · ") || "starting";
      }
      if (r.status === "failed" || r.status === "does_not_fit" || r.status === "cancelled") return r.error || "";
      return "";
    }

    function statusCell(r) {
      const reason = reasonOf(r);
      return [badge(r.status),
        r.status === "running" ? el("progress", { max: 1, value: r.progress || 0, "aria-label": `progress of run ${r.id}` }) : "",
        reason ? el("div", { class: `reason reason-${r.status}`, title: reason }, reason) : ""];
    }

    function actions(r) {
      const canCancel = (r.status === "queued" || r.status === "running") && !r.cancel_requested;
      const canRetry = ["failed", "cancelled", "does_not_fit"].includes(r.status);
      return [
        canCancel ? el("button", { type: "button", class: "act cancel", "data-action": "cancel", "aria-label": `Cancel run ${r.id}`,
          onclick: guard(() => act(r.id, "cancel")) }, "Cancel") : "",
        canRetry ? el("button", { type: "button", class: "act retry", "data-action": "retry", "aria-label": `Retry run ${r.id}`,
          onclick: guard(() => act(r.id, "retry")) }, "Retry") : "",
        el("a", { class: "act clone", "data-action": "clone", href: `#/submit?clone=${r.id}`, "aria-label": `Clone run ${r.id}` }, "Clone"),
      ];
    }

    function cellContent(c, r) {
      switch (c.key) {
        case "id": return el("a", { href: `#/runs/${r.id}` }, `#${r.id}`, r.name ? el("div", { class: "sub" }, r.name) : "");
        case "status": return statusCell(r);
        case "score": return r.score === null ? "" : el("span", { title: r.main_metric }, Api.fmtScore(r.score));
        case "stored_activation_bytes": case "peak_bytes": return Api.fmtBytes(r[c.key]);
        case "created_at": return Api.fmtTime(r.created_at);
        case "duration_seconds": return Api.fmtDuration(r.duration_seconds);
        case "learning_rate": return r.learning_rate === null ? "default" : String(r.learning_rate);
        case "actions": return actions(r);
        default: return r[c.key] === null || r[c.key] === undefined ? "" : String(r[c.key]);
      }
    }

    function row(r) {
      return el("tr", { "data-id": r.id, "data-status": r.status },
        COLS.map((c) => el("td", { "data-col": c.key, class: c.opt ? "opt" : null }, cellContent(c, r))));
    }

    function updateRow(r) {
      const tr = document.querySelector(`#runs-table tr[data-id="${r.id}"]`);
      if (!tr) return;
      tr.dataset.status = r.status;
      for (const key of ["status", "score", "actions", "duration_seconds"]) {
        const td = tr.querySelector(`td[data-col="${key}"]`);
        if (td) td.replaceChildren(...[cellContent(COLS.find((c) => c.key === key), r)].flat());
      }
    }

    function header() {
      const sortable = new Set(state.catalog.sortable);
      const key = state.runs.sort.replace(/^-/, "");
      const desc = state.runs.sort.startsWith("-");
      return el("thead", {}, el("tr", {}, COLS.map((c) => {
        if (!c.sort || !sortable.has(c.sort)) return el("th", { scope: "col", class: c.opt ? "opt" : null }, c.label);
        const on = key === c.sort;
        return el("th", { scope: "col", class: c.opt ? "opt" : null, "aria-sort": on ? (desc ? "descending" : "ascending") : "none" },
          el("button", { type: "button", class: "sort", "data-sort": c.sort,
            onclick: () => setParams({ sort: on && !desc ? `-${c.sort}` : c.sort, offset: 0 }) },
          c.label, el("span", { class: "arrow", "aria-hidden": "true" }, on ? (desc ? " ▼" : " ▲") : "")));
      })));
    }

    function params() {
      const p = state.runs;
      return { ...p.filters, sort: p.sort, limit: p.limit, offset: p.offset };
    }

    function setParams(change) {
      const p = { ...params(), ...change };
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(p)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
      navigate(`#/runs?${q}`);
    }

    async function load() {
      const seq = ++state.runs.seq;
      const page = await Api.get("/api/runs", params());
      if (seq !== state.runs.seq) return;
      state.runs.page = page;
      state.runs.byId = new Map(page.items.map((r) => [r.id, r]));
      if (page.items.some((r) => r.status === "queued")) await loadSystem();
      const table = $("runs-table");
      const body = page.items.length ? page.items.map(row)
        : [el("tr", {}, el("td", { colspan: COLS.length, class: "empty" }, "No runs match. ", el("a", { href: "#/submit" }, "Submit one")))];
      table.replaceChildren(header(), el("tbody", {}, body));
      table.dataset.loaded = String(page.items.length);
      performance.mark("mefts:runs-table");  // read by bench/page_load.py
      const from = page.total ? page.offset + 1 : 0;
      $("page-info").textContent = `${from}–${page.offset + page.items.length} of ${page.total}`;
      $("page-prev").disabled = page.offset === 0;
      $("page-next").disabled = page.offset + page.items.length >= page.total;
      const filters = Api.query(state.runs.filters);
      downloads($("runs-downloads"), {
        stem: "runs", api: { csv: `/api/runs.csv${filters}`, json: `/api/runs.json${filters}` },
        local: async () => exportRows(await Api.get(`/api/runs.json${filters}`)),
      });
    }

    /** Markdown/LaTeX of the runs export (the API serves CSV and JSON only): the columns of this table. */
    function exportRows(rows) {
      const columns = ["id", "status", "method_label", "backbone", "task", "seed", "batch_size", "max_seq_len",
        "learning_rate_used", "main_metric", "score", "stored_activations", "peak", "peak_activation", "created_at",
        "duration_seconds", "error"];
      return { columns, rows: rows.map((r) => ({ ...r, score: r.score === null ? "" : Api.fmtScore(r.score),
        stored_activations: Api.fmtBytes(r["memory.stored_activation_bytes"]), peak: Api.fmtBytes(r["memory.peak_bytes"]),
        peak_activation: Api.fmtBytes(r["memory.peak_activation_bytes"]),
        duration_seconds: r.duration_seconds === null ? "" : r.duration_seconds.toFixed(1) })) };
    }

    async function loadSystem() {
      state.system = await Api.get("/api/system");
      const s = state.system;
      const alive = s.workers.filter((w) => w.alive);
      $("workers-note").textContent = alive.length
        ? `${alive.length} live worker${alive.length > 1 ? "s" : ""}: ` + alive.map((w) => `${w.host} (${w.busy}/${w.slots} ${w.slot_kind} slot${w.slots > 1 ? "s" : ""} busy)`).join(", ") +
          `. Queue: ${Object.entries(s.queue).filter(([, n]) => n).map(([k, n]) => `${n} ${STATUS_TEXT[k] || k}`).join(", ") || "empty"}.`
        : "No live worker: queued runs wait until `mefts worker` or `mefts serve` (with its embedded worker) runs.";
      const cols = ["position", "id", "method", "backbone", "task", "reason"];
      $("queue-table").replaceChildren(
        el("thead", {}, el("tr", {}, cols.map((c) => el("th", { scope: "col" }, c === "id" ? "run" : c)))),
        el("tbody", {}, s.queued.length ? s.queued.map((q) => el("tr", {}, cols.map((c) =>
          el("td", {}, c === "id" ? el("a", { href: `#/runs/${q.id}` }, `#${q.id}`) : String(q[c])))))
          : el("tr", {}, el("td", { colspan: cols.length, class: "empty" }, "Nothing is waiting."))));
      downloads($("queue-downloads"), { stem: "queue", local: async () => ({ columns: cols, rows: s.queued }) });
    }

    async function act(id, action) {
      const run = await Api.post(`/api/runs/${id}/${action}`);
      const verb = { cancel: run.status === "cancelled" ? "Cancelled" : "Cancelling", retry: "Queued again:" }[action];
      flash(`${verb} run #${id}.`);
      const r = state.runs.byId.get(id);
      if (r) { Object.assign(r, run); updateRow(r); }
      if (state.detail.id === id) Detail.refresh();
      reload();
    }

    async function show(q) {
      const p = state.runs;
      p.filters = {};
      for (const k of [...FILTERS, "sweep"]) if (q.get(k)) p.filters[k] = q.get(k);
      p.sort = q.get("sort") || "-id";
      p.limit = Number(q.get("limit")) || 50;
      p.offset = Number(q.get("offset")) || 0;
      FILTERS.forEach((k) => { $(`flt-${k}`).value = p.filters[k] || ""; });
      $("flt-limit").value = String(p.limit);
      await Promise.all([load(), loadSystem()]);
    }

    const reload = debounce(guard(async () => { if (state.view === "runs") await load(); }), 400);

    /** A live event: update the row in place; reload the page when the set or the order may change. */
    function onEvent(ev) {
      const r = state.runs.byId.get(ev.id);
      if (!r) { reload(); return; }
      const statusChanged = r.status !== ev.status;
      Object.assign(r, ev);
      updateRow(r);
      if (statusChanged || state.runs.sort.replace(/^-/, "") !== "id") reload();
    }

    function init() {
      const opt = (v, t) => el("option", { value: v }, t);
      const c = state.catalog;
      $("flt-status").replaceChildren(opt("", "any"), ...c.statuses.map((s) => opt(s, STATUS_TEXT[s] || s)));
      $("flt-method").replaceChildren(opt("", "any"), ...Object.keys(c.methods).map((m) => opt(m, m)));
      $("flt-backbone").replaceChildren(opt("", "any"), ...c.backbones.map((b) => opt(b.name, b.name)));
      $("flt-task").replaceChildren(opt("", "any"), ...c.tasks.map((t) => opt(t.name, t.name)));
      document.querySelectorAll("#runs-filters select").forEach((s) => s.addEventListener("change", () =>
        setParams({ [s.dataset.key]: s.value, offset: 0 })));
      $("page-prev").addEventListener("click", () => setParams({ offset: Math.max(0, state.runs.offset - state.runs.limit) }));
      $("page-next").addEventListener("click", () => setParams({ offset: state.runs.offset + state.runs.limit }));
      setInterval(() => { if (state.view === "runs" && !document.hidden) guard(loadSystem)(); }, 10000);
    }

    return { show, init, onEvent, reload, act, reasonOf, actions };
  })();

  // ================================================================================================ Submit
  const Submit = (() => {
    const MAIN_HP = ["learning_rate", "batch_size", "epochs", "max_seq_len", "max_train_samples", "max_eval_samples"];
    const HP_HELP = {
      learning_rate: "default: 2e-5 for full, 5e-4 for the others", max_train_samples: "default: all",
      max_eval_samples: "caps dev and test each; default: all", threads: "default: the worker's cores per slot",
      grad_clip: "max global gradient norm; 0 disables", patience: "epochs without dev improvement before stopping",
    };
    const mode = () => (document.querySelector('input[name="mode"]:checked') || {}).value || "single";
    const isBool = (t) => /^bool/.test(t);
    const isInt = (t) => /\bint\b/.test(t) && !/float/.test(t);
    const isFloat = (t) => /float/.test(t);
    const isList = (t) => /^list/.test(t);
    const show_ = (v) => (v === null || v === undefined ? "" : Array.isArray(v) ? v.join(", ") : String(v));

    /** A text field's value in the type the catalog gives; text that does not parse is sent as typed, so the
        API's 422 names the field. Empty means "not set" (undefined). */
    function parseValue(text, type) {
      const s = text.trim();
      if (s === "") return undefined;
      if (/^(none|null)$/i.test(s) && /None/.test(type)) return null;
      if (isList(type)) return s.split(",").map((x) => x.trim()).filter(Boolean);
      if ((isInt(type) && /^[-+]?\d+$/.test(s)) || (isFloat(type) && s !== "" && !Number.isNaN(Number(s)))) return Number(s);
      return s;
    }

    function field(id, label, input, help) {
      const helpId = help ? `${id}-help` : null;
      if (helpId) input.setAttribute("aria-describedby", helpId);
      if (input.type === "checkbox") {
        return el("div", { class: "field check" }, input, el("label", { for: id }, label), help ? el("small", { id: helpId }, help) : "");
      }
      return el("div", { class: "field" }, el("label", { for: id }, label), input, help ? el("small", { id: helpId }, help) : "");
    }

    function optionInput(method, o) {
      const id = `mo-${method}-${o.name}`;
      if (isBool(o.type)) {
        return field(id, o.name.replace(/_/g, " "), el("input", { type: "checkbox", id, "data-opt": o.name, checked: !!o.default }), o.help);
      }
      const choices = /one of ([\w, ]+)$/.exec(o.help || "");
      if (choices) {
        const sel = el("select", { id, "data-opt": o.name }, ...choices[1].split(",").map((c) => c.trim()).map((c) =>
          el("option", { value: c, selected: c === o.default }, c)));
        return field(id, o.name.replace(/_/g, " "), sel, o.help);
      }
      return field(id, o.name.replace(/_/g, " "), el("input", { type: "text", id, "data-opt": o.name, value: show_(o.default),
        placeholder: o.default === null ? "default: none" : "", inputmode: isInt(o.type) || isFloat(o.type) ? "decimal" : null }),
      `${o.help}${o.type ? ` (${o.type})` : ""}`);
    }

    /** {option: value} of the options that differ from the catalog's defaults. */
    function methodOptions(method) {
      const out = {};
      for (const o of state.catalog.methods[method] || []) {
        const input = $(`mo-${method}-${o.name}`);
        if (!input) continue;
        const v = input.type === "checkbox" ? input.checked : input.tagName === "SELECT" ? input.value : parseValue(input.value, o.type);
        if (v === undefined) { if (o.default !== null) out[o.name] = null; continue; }
        if (JSON.stringify(v) !== JSON.stringify(o.default)) out[o.name] = v;
      }
      return out;
    }

    /** Hyperparameters that were set; in sweep mode a comma-separated list becomes a list (a grid axis). */
    function hyperparameters(sweep) {
      const out = {};
      for (const h of state.catalog.hyperparameters) {
        const input = $(`hp-${h.name}`);
        if (!input) continue;
        if (input.type === "checkbox") { if (input.checked !== !!h.default) out[h.name] = input.checked; continue; }
        const text = input.value.trim();
        if (!text) continue;
        if (sweep && text.includes(",")) out[h.name] = text.split(",").map((t) => parseValue(t, h.type)).filter((v) => v !== undefined);
        else out[h.name] = parseValue(text, h.type);
      }
      return out;
    }

    const checked = (box) => [...box.querySelectorAll("input:checked")].map((i) => i.value);

    function taskOptions() {
      const text = $("f-task_options").value.trim();
      if (!text) return {};
      try { return JSON.parse(text); } catch (e) { throw Object.assign(new Error(`not valid JSON: ${e.message}`), { field: "f-task_options" }); }
    }

    function body() {
      const common = { task_options: taskOptions(), priority: parseValue($("f-priority").value, "int") ?? 0 };
      const name = $("f-name").value.trim();
      if (name) common.name = name;
      const device = $("f-device").value;
      if (device && device !== "auto") common.device = device;
      if (mode() === "sweep") {
        const methods = checked($("f-methods"));
        const seeds = $("f-seeds").value.split(",").map((s) => parseValue(s, "int")).filter((v) => v !== undefined);
        return { ...common, methods, backbones: checked($("f-backbones")), tasks: checked($("f-tasks")), seeds,
          method_options: Object.fromEntries(methods.map((m) => [m, methodOptions(m)]).filter(([, o]) => Object.keys(o).length)),
          hyperparameters: hyperparameters(true) };
      }
      const method = $("f-method").value;
      const out = { ...common, backbone: $("f-backbone").value, method, task: $("f-task").value,
        method_options: methodOptions(method), hyperparameters: hyperparameters(false) };
      const seed = parseValue($("f-seed").value, "int");
      if (seed !== undefined) out.seed = seed;
      return out;
    }

    // ------------------------------------------------------------------------------------------ field errors
    function clearErrors() {
      document.querySelectorAll("#submit-form .field-error").forEach((n) => n.remove());
      document.querySelectorAll("#submit-form [aria-invalid]").forEach((n) => {
        n.removeAttribute("aria-invalid");
        const d = (n.getAttribute("aria-describedby") || "").split(" ").filter((x) => x && !x.endsWith("-error"));
        if (d.length) n.setAttribute("aria-describedby", d.join(" ")); else n.removeAttribute("aria-describedby");
      });
      $("form-error").hidden = true;
    }

    /** The form control a 422 detail's `loc` names, or null. */
    function controlFor(loc) {
      const l = loc[0] === "body" ? loc.slice(1) : loc;
      const [a, b, c] = l;
      const sweep = mode() === "sweep";
      const method = $("f-method").value;
      const ids = [];
      if (a === "hyperparameters" && b !== undefined) ids.push(`hp-${b}`);
      else if (a === "method_options") {
        if (sweep) ids.push(`mo-${b}-${c}`, `mo-${b}`);
        else ids.push(`mo-${method}-${b}`, `mo-${method}`);
      } else if (a === "task_options") ids.push("f-task_options");
      else if (a) ids.push(`f-${a}`);
      for (const id of ids) { const n = $(id); if (n) return n; }
      return null;
    }

    function showFieldError(control, msg) {
      const id = `${control.id}-error`;
      const box = control.closest(".field") || control;
      box.append(el("p", { class: "field-error", id, role: "alert" }, msg));
      control.setAttribute("aria-invalid", "true");
      const d = control.getAttribute("aria-describedby");
      control.setAttribute("aria-describedby", d ? `${d} ${id}` : id);
      const details = control.closest("details");
      if (details) details.open = true;
    }

    function showErrors(err) {
      clearErrors();
      const loose = [];
      let first = null;
      for (const d of err.fieldErrors) {
        const control = controlFor(d.loc || []);
        if (control) { showFieldError(control, d.msg); first = first || control; } else loose.push(d.msg);
      }
      if (!err.fieldErrors.length) loose.push(err.message);
      if (loose.length) { $("form-error").textContent = loose.join("; "); $("form-error").hidden = false; }
      if (first) { first.focus({ preventScroll: true }); first.scrollIntoView({ block: "center" }); }
    }

    async function submit(ev) {
      ev.preventDefault();
      clearErrors();
      let payload;
      try { payload = body(); } catch (e) {
        if (e.field) { showFieldError($(e.field), e.message); return; }
        throw e;
      }
      const btn = $("submit-btn");
      btn.disabled = true;
      try {
        if (mode() === "sweep") {
          const sweep = await Api.post("/api/sweeps", payload);
          flash(`Queued sweep #${sweep.id}: ${sweep.n_runs} runs.`, "ok", ["show them", `#/runs?sweep=${sweep.id}`]);
          navigate(`#/runs?sweep=${sweep.id}`);
        } else {
          const run = state.clone
            ? await Api.post(`/api/runs/${state.clone.id}/clone`, { ...payload, method_options: cloneOptions(payload) })
            : await Api.post("/api/runs", payload);
          flash(`Queued run #${run.id}${state.clone ? ` (clone of #${state.clone.id})` : ""}.`, "ok", ["details", `#/runs/${run.id}`]);
          endClone();
          navigate("#/runs");
        }
      } catch (e) {
        if (e instanceof Api.ApiError && e.status === 422) showErrors(e);
        else throw e;
      } finally {
        btn.disabled = false;
      }
    }

    /** A clone merges method options into the source's: reset every option the form leaves at its default. */
    function cloneOptions(payload) {
      const out = {};
      for (const o of state.catalog.methods[payload.method] || []) out[o.name] = null;
      return { ...out, ...payload.method_options };
    }

    // ------------------------------------------------------------------------------------------ pre-flight
    const measured = new Map();
    async function runsFor(backbone, method) {
      const key = `${backbone}|${method}`;
      const hit = measured.get(key);
      if (hit && Date.now() - hit.t < 10000) return hit.items;
      const page = await Api.get("/api/runs", { backbone, method, status: "succeeded,does_not_fit", limit: 1000, sort: "-id" });
      measured.set(key, { t: Date.now(), items: page.items });
      return page.items;
    }

    /** The label the API gives a method with options (runspec.method_label): method(k=v,...)+gc. */
    function methodLabel(method, opts) {
      const diff = { ...opts };
      const gc = !!diff.gradient_checkpointing;
      delete diff.gradient_checkpointing;
      const types = Object.fromEntries((state.catalog.methods[method] || []).map((o) => [o.name, o.type]));
      const py = (v, t) => (v === null ? "None" : v === true ? "True" : v === false ? "False"
        : Array.isArray(v) ? `[${v.map((x) => `'${x}'`).join(", ")}]`
          : typeof v === "number" && isFloat(t) && Number.isInteger(v) ? v.toFixed(1) : String(v));
      const keys = Object.keys(diff).sort();
      return method + (keys.length ? `(${keys.map((k) => `${k}=${py(diff[k], types[k])}`).join(",")})` : "") + (gc ? "+gc" : "");
    }

    function firstValue(name) {
      const h = state.catalog.hyperparameters.find((x) => x.name === name);
      const text = ($(`hp-${name}`) || { value: "" }).value.split(",")[0].trim();
      const v = Number(text);
      return text && Number.isFinite(v) ? v : h ? h.default : null;
    }

    /** POST /api/estimate for one backbone × method at (B, T): {ok: estimate} or {error: the 422's reason}. */
    const estimates = new Map();
    async function estimateFor(backbone, method, B, T) {
      const task = mode() === "sweep" ? (checked($("f-tasks"))[0] || $("f-task").value) : $("f-task").value;
      const hp = {};
      if (Number.isInteger(B) && B > 0) hp.batch_size = B;
      if (Number.isInteger(T) && T > 0) hp.max_seq_len = T;
      const bf16 = $("hp-bf16");
      if (bf16 && bf16.checked) hp.bf16 = true;
      const payload = { backbone, method, task, method_options: methodOptions(method), hyperparameters: hp };
      const device = $("f-device").value;
      if (device && device !== "auto") payload.device = device;
      const key = JSON.stringify(payload);
      const hit = estimates.get(key);
      if (hit) return hit;
      let out;
      try {
        out = { ok: await Api.post("/api/estimate", payload) };
      } catch (e) {
        if (!(e instanceof Api.ApiError) || e.status !== 422) throw e;
        out = { error: Array.isArray(e.detail) ? e.detail.map((d) => d.msg).join("; ") : String(e.detail) };
      }
      if (estimates.size > 200) estimates.clear();
      estimates.set(key, out);
      return out;
    }

    let preflightSeq = 0;
    const preflight = debounce(guard(async () => {
      const seq = ++preflightSeq;  // a slower, older check must not overwrite a newer one
      const box = $("preflight");
      const sweep = mode() === "sweep";
      const methods = sweep ? checked($("f-methods")) : [$("f-method").value];
      const backbones = sweep ? checked($("f-backbones")) : [$("f-backbone").value];
      const B = firstValue("batch_size");
      const T = firstValue("max_seq_len");
      const budgetText = $("f-budget").value.trim();
      const budget = budgetText ? Number(budgetText) * Api.GiB : null;
      const combos = backbones.flatMap((b) => methods.map((m) => [b, m])).slice(0, 12);
      if (!combos.length) { box.replaceChildren(el("p", { class: "note" }, "Choose a method and a backbone.")); return; }
      const items = [];
      for (const [backbone, method] of combos) {
        const label = methodLabel(method, methodOptions(method));
        const [all, est] = await Promise.all([runsFor(backbone, method), estimateFor(backbone, method, B, T)]);
        const runs = all.filter((r) => r.method_label === label);
        items.push(estimateItem(backbone, label, runs, B, T, budget, est));
      }
      if (seq !== preflightSeq) return;
      box.replaceChildren(
        el("p", { class: "note" }, `At batch ${B}, sequence length ${T}. The estimate is analytic (one AdamW step; ` +
          "mefts_core.estimate). Measured runs, where there are any, come first: memory grows with batch and sequence " +
          "length, so a run at a smaller (or equal) batch and length gives a lower bound and one at a larger (or equal) " +
          "batch and length an upper bound."),
        el("ul", { class: "preflight-list" }, items),
        budgetText && !(budget > 0) ? el("p", { class: "field-error" }, "The budget must be a number of GiB > 0.") : "");
    }), 300);

    function estimateItem(backbone, label, runs, B, T, budget, est) {
      const peakRuns = runs.filter((r) => r.status === "succeeded" && r.peak_bytes);
      const exact = peakRuns.filter((r) => r.batch_size === B && r.max_seq_len === T).sort((a, b) => a.peak_bytes - b.peak_bytes);
      const lower = peakRuns.filter((r) => r.batch_size <= B && r.max_seq_len <= T).sort((a, b) => b.peak_bytes - a.peak_bytes)[0];
      const upper = peakRuns.filter((r) => r.batch_size >= B && r.max_seq_len >= T).sort((a, b) => a.peak_bytes - b.peak_bytes)[0];
      const dnf = runs.find((r) => r.status === "does_not_fit" && r.batch_size <= B && r.max_seq_len <= T);
      const at = (r) => `run #${r.id}: batch ${r.batch_size}, seq ${r.max_seq_len}${r.device_used ? ` on ${r.device_used}` : ""}`;
      const lines = [];
      // lo..hi: what the chosen configuration needs at least and at most, as far as measurements tell.
      let lo = null;
      let hi = null;
      if (exact.length) {
        const [min, max] = [exact[0], exact[exact.length - 1]];
        lo = min.peak_bytes;
        hi = max.peak_bytes;
        lines.push(`measured peak ${Api.fmtBytes(min.peak_bytes)}${exact.length > 1 ? ` to ${Api.fmtBytes(max.peak_bytes)} over ${exact.length} runs` : ""}` +
          ` (stored activations ${Api.fmtBytes(min.stored_activation_bytes)}; ${exact.length > 1 ? `runs ${exact.map((r) => `#${r.id}`).join(", ")}` : at(min)})`);
      } else {
        if (lower) { lo = lower.peak_bytes; lines.push(`at least ${Api.fmtBytes(lower.peak_bytes)} peak (${at(lower)})`); }
        if (upper) { hi = upper.peak_bytes; lines.push(`at most ${Api.fmtBytes(upper.peak_bytes)} peak (${at(upper)})`); }
      }
      let verdict = "unknown";
      if (dnf) { lines.push(`does not fit: ${at(dnf)} already ran out of memory (${dnf.error || "out of memory"})`); verdict = "no"; }
      if (budget > 0 && verdict !== "no") {
        if (lo !== null && lo > budget) verdict = "no";
        else if (hi !== null && hi <= budget) verdict = "yes";
      }
      const e = est && est.ok;
      if (budget > 0 && verdict === "unknown" && e) verdict = e.peak_bytes <= budget ? "yes" : "no";
      if (!lines.length) lines.push("no measured run with this backbone, method and options yet");
      const head = budget > 0 ? { yes: `fits in ${Api.fmtBytes(budget)}`, no: `will not fit in ${Api.fmtBytes(budget)}`,
        unknown: `cannot tell whether it fits in ${Api.fmtBytes(budget)}` }[verdict] : dnf ? "will not fit" : "";
      return el("li", { class: `estimate verdict-${budget > 0 || dnf ? verdict : "none"}`, "data-verdict": verdict },
        el("strong", {}, `${label} on ${backbone}`), head ? el("span", { class: "verdict" }, ` — ${head}`) : "",
        el("div", { class: "sub" }, lines.join("; ")),
        e ? el("div", { class: "sub estimated", "data-peak": String(e.peak_bytes) },
          `estimated peak ${Api.fmtBytes(e.peak_bytes)} = parameters ${Api.fmtBytes(e.param_bytes)} + gradients ` +
          `${Api.fmtBytes(e.grad_bytes)} + optimizer ${Api.fmtBytes(e.optimizer_bytes)} + peak activations ` +
          `${Api.fmtBytes(e.peak_activation_bytes)} (stored activations ${Api.fmtBytes(e.stored_activation_bytes)}) ` +
          `on ${e.device}, ${e.dtype}`) : "",
        est && est.error ? el("div", { class: "sub note estimated-none" }, `no estimate: ${est.error}`) : "",
        e && budget > 0 && e.peak_bytes > budget
          ? el("div", { class: "field-error estimate-warning", role: "alert" },
            `The estimated peak ${Api.fmtBytes(e.peak_bytes)} exceeds the budget of ${Api.fmtBytes(budget)}.`) : "");
    }

    const gridSize = () => {
      if (mode() !== "sweep") return;
      const hp = hyperparameters(true);
      const n = checked($("f-methods")).length * checked($("f-backbones")).length * checked($("f-tasks")).length *
        Math.max(1, $("f-seeds").value.split(",").filter((s) => s.trim()).length) *
        Object.values(hp).reduce((acc, v) => acc * (Array.isArray(v) ? v.length : 1), 1);
      const max = state.catalog.max_grid;
      $("grid-size").textContent = `Grid: ${n} run${n === 1 ? "" : "s"}${n > max ? ` — more than the limit of ${max}` : ""}.`;
      $("grid-size").classList.toggle("warn", n > max);
    };

    function syncMode() {
      const sweep = mode() === "sweep";
      document.querySelectorAll("#submit-form .single-only").forEach((n) => { n.hidden = sweep; });
      document.querySelectorAll("#submit-form .sweep-only").forEach((n) => { n.hidden = !sweep; });
      const methods = sweep ? checked($("f-methods")) : [$("f-method").value];
      document.querySelectorAll("#method-options fieldset").forEach((f) => { f.hidden = !methods.includes(f.dataset.method); });
      $("submit-btn").textContent = sweep ? "Queue sweep" : state.clone ? `Queue clone of #${state.clone.id}` : "Queue run";
      $("mode-sweep").disabled = !!state.clone;
      gridSize();
      preflight();
    }

    // ------------------------------------------------------------------------------------------ building, cloning
    function build() {
      const c = state.catalog;
      const opt = (v, text, sel) => el("option", { value: v, selected: sel }, text);
      const defBackbone = c.backbones.some((b) => b.name === "tiny-bert") ? "tiny-bert" : c.backbones[0].name;
      const defTask = c.tasks.some((t) => t.name === "sst2") ? "sst2" : (c.tasks[0] || {}).name;
      const defMethod = c.methods.meft1 ? "meft1" : Object.keys(c.methods)[0];
      $("f-backbone").replaceChildren(...c.backbones.map((b) => opt(b.name, `${b.name} — ${b.description}`, b.name === defBackbone)));
      $("f-method").replaceChildren(...Object.keys(c.methods).map((m) => opt(m, m, m === defMethod)));
      $("f-task").replaceChildren(...c.tasks.map((t) => opt(t.name, `${t.name} — ${t.description || ""}${t.offline_data === false ? " (needs hub or local data)" : ""}`, t.name === defTask)));
      const checks = (box, prefix, items, def) => box.replaceChildren(box.querySelector("legend"), ...items.map(([v, text]) =>
        el("div", { class: "check" }, el("input", { type: "checkbox", id: `${prefix}-${v}`, value: v, checked: v === def }),
          el("label", { for: `${prefix}-${v}` }, text))));
      checks($("f-methods"), "sw-method", Object.keys(c.methods).map((m) => [m, m]), defMethod);
      checks($("f-backbones"), "sw-backbone", c.backbones.map((b) => [b.name, b.name]), defBackbone);
      checks($("f-tasks"), "sw-task", c.tasks.map((t) => [t.name, t.name]), defTask);
      $("method-options").replaceChildren(...Object.entries(c.methods).map(([m, opts]) => el("fieldset",
        { class: "group method-opts", id: `mo-${m}`, "data-method": m }, el("legend", {}, `${m} options`),
      opts.length ? opts.map((o) => optionInput(m, o)) : el("p", { class: "note" }, "no options"))));
      const hpInput = (h) => {
        const id = `hp-${h.name}`;
        const label = h.name.replace(/_/g, " ");
        if (isBool(h.type)) return field(id, label, el("input", { type: "checkbox", id, checked: !!h.default }), HP_HELP[h.name]);
        return field(id, label, el("input", { type: "text", id, inputmode: "decimal",
          placeholder: h.default === null ? "default" : `default: ${h.default}` }), HP_HELP[h.name]);
      };
      $("hyper-main").replaceChildren(...c.hyperparameters.filter((h) => MAIN_HP.includes(h.name)).map(hpInput));
      $("hyper-more").replaceChildren(...c.hyperparameters.filter((h) => !MAIN_HP.includes(h.name)).map(hpInput));
      const gpus = (state.system ? state.system.devices : []).filter((d) => d.kind === "gpu");
      $("f-device").replaceChildren(opt("auto", "auto (a GPU if the worker has one)", true), opt("cpu", "cpu"),
        ...gpus.map((g) => opt(`cuda:${g.index}`, `cuda:${g.index} — ${g.name}`)), gpus.length ? "" : opt("cuda", "cuda (any GPU)"));
      $("budget-list").replaceChildren(...gpus.map((g) => el("option", { value: (g.total_memory_bytes / Api.GiB).toFixed(1) }, g.name)));
    }

    function resetForm() {
      $("submit-form").reset();
      build();
      clearErrors();
      syncMode();
    }

    function endClone() {
      state.clone = null;
      $("clone-banner").hidden = true;
    }

    async function startClone(id) {
      const run = await Api.get(`/api/runs/${id}`);
      resetForm();
      state.clone = run;
      const cfg = run.config;
      $("mode-single").checked = true;
      $("f-backbone").value = cfg.backbone;
      $("f-method").value = cfg.method;
      $("f-task").value = cfg.task;
      $("f-seed").value = cfg.seed ?? "";
      $("f-device").value = [...$("f-device").options].some((o) => o.value === cfg.device) ? cfg.device : "auto";
      $("f-name").value = run.name || "";
      $("f-priority").value = run.priority;
      $("f-task_options").value = Object.keys(cfg.task_options || {}).length ? JSON.stringify(cfg.task_options) : "";
      for (const [k, v] of Object.entries(cfg.method_options || {})) {
        const input = $(`mo-${cfg.method}-${k}`);
        if (!input) continue;
        if (input.type === "checkbox") input.checked = !!v; else input.value = show_(v);
      }
      for (const h of state.catalog.hyperparameters) {
        const input = $(`hp-${h.name}`);
        if (!input || !(h.name in cfg)) continue;
        if (input.type === "checkbox") input.checked = !!cfg[h.name];
        else input.value = cfg[h.name] === null || cfg[h.name] === h.default ? "" : show_(cfg[h.name]);
      }
      $("clone-banner").replaceChildren(`Cloning run #${id} (${run.method_label} · ${run.backbone} · ${run.task}): edit and queue it as a new run. `,
        el("button", { type: "button", onclick: () => { endClone(); navigate("#/submit"); } }, "Start from scratch instead"));
      $("clone-banner").hidden = false;
      syncMode();
    }

    async function show(params) {
      const clone = params.get("clone");
      if (clone && (!state.clone || state.clone.id !== Number(clone))) await startClone(Number(clone));
      else if (!clone && state.clone) { endClone(); syncMode(); }
      else preflight();
    }

    function init() {
      build();
      const form = $("submit-form");
      form.addEventListener("submit", guard(submit));
      form.addEventListener("change", () => syncMode());
      form.addEventListener("input", debounce(() => { gridSize(); preflight(); }, 200));
      $("reset-btn").addEventListener("click", () => { endClone(); resetForm(); navigate("#/submit"); });
      syncMode();
    }

    return { show, init, build };
  })();

  // ================================================================================================ Run detail
  const Detail = (() => {
    function kv(pairs) {
      return el("dl", { class: "facts" }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "").map(([k, v]) =>
        el("div", {}, el("dt", {}, k), el("dd", {}, v))));
    }

    function skeleton(id) {
      $("run-detail").replaceChildren(
        el("p", { class: "back" }, el("a", { href: "#/runs" }, "← All runs")),
        el("div", { class: "detail-head" }, el("h1", { id: "run-title" }, `Run #${id}`), el("div", { id: "run-status" }), el("div", { id: "run-actions", class: "actions" })),
        el("div", { id: "run-reason" }),
        el("div", { id: "run-facts" }),
        el("h2", {}, "Curves"),
        el("div", { class: "grid-2" }, el("div", { id: "chart-loss", class: "chart" }), el("div", { id: "chart-metric", class: "chart" })),
        el("h2", { id: "mem-title" }, "Memory breakdown"),
        el("div", { id: "mem-body" }),
        el("section", { id: "fidelity-section", hidden: true }, el("h2", {}, "Gradient fidelity per layer"),
          el("p", { class: "note" }, "Cosine and relative error between the reversible and the plain-autograd gradients of each layer's trainable parameters."),
          el("div", { id: "chart-fidelity", class: "chart" })),
        el("h2", {}, "Log (tail)"),
        el("pre", { id: "run-log", class: "log", tabindex: "0" }),
        el("p", {}, el("a", { href: `/api/runs/${id}/log`, target: "_blank", rel: "noopener" }, "full log")),
        el("h2", { id: "cfg-title" }, "Configuration"),
        el("div", { class: "downloads", id: "cfg-downloads" }),
        el("div", { class: "table-wrap" }, el("table", { id: "cfg-table", class: "data kv", "aria-labelledby": "cfg-title" })));
    }

    async function show(id) {
      if (state.detail.id !== id) { state.detail = { id, run: null }; skeleton(id); }
      await refresh();
    }

    async function refresh() {
      const id = state.detail.id;
      if (id === null) return;
      let run;
      try { run = await Api.get(`/api/runs/${id}`); } catch (e) {
        if (e.status === 404) { $("run-detail").replaceChildren(el("p", { class: "empty-state" }, `Run #${id} does not exist. `, el("a", { href: "#/runs" }, "All runs"))); return; }
        throw e;
      }
      if (state.detail.id !== id) return;
      state.detail.run = run;
      if (run.status === "queued" && !state.system) state.system = await Api.get("/api/system");
      $("run-title").textContent = `Run #${run.id} · ${run.method_label} · ${run.backbone} · ${run.task}${run.name ? ` · ${run.name}` : ""}`;
      $("run-status").replaceChildren(badge(run.status), run.status === "running"
        ? el("progress", { max: 1, value: run.progress || 0, "aria-label": "progress" }) : "");
      $("run-actions").replaceChildren(...Runs.actions(run).filter(Boolean));
      const reason = Runs.reasonOf(run);
      $("run-reason").replaceChildren(reason ? el("div", { class: `reason-box reason-${run.status}` },
        el("strong", {}, { queued: "Waiting: ", running: "Progress: ", failed: "Failed: ", does_not_fit: "Does not fit: ", cancelled: "Cancelled: " }[run.status] || ""),
        reason, run.traceback ? el("details", {}, el("summary", {}, "traceback"), el("pre", { class: "log" }, run.traceback)) : "") : "");
      const r = run.result || {};
      $("run-facts").replaceChildren(kv([
        ["score", run.score !== null ? `${Api.fmtScore(run.score)} ${run.main_metric || ""} (${r.test_metrics && Object.keys(r.test_metrics).length ? "test" : "dev"})` : null],
        ["seed", run.seed], ["batch", run.batch_size], ["sequence length", run.max_seq_len], ["epochs", run.epochs],
        ["learning rate", r.learning_rate ?? run.learning_rate ?? "method default"],
        ["trainable / total params", run.trainable_params ? `${run.trainable_params.toLocaleString()} / ${(run.total_params || 0).toLocaleString()}` : null],
        ["attempts", `${run.attempts} of ${run.max_attempts}`], ["device", run.device_used || run.device],
        ["created", Api.fmtTime(run.created_at)], ["started", Api.fmtTime(run.started_at)], ["finished", Api.fmtTime(run.finished_at)],
        ["duration", Api.fmtDuration(run.duration_seconds)], ["worker", run.worker_id], ["git revision", run.git_revision],
        ["versions", run.versions ? Object.entries(run.versions).map(([k, v]) => `${k} ${v}`).join(", ") : null],
        ["split", r.split], ["cloned from", run.cloned_from ? el("a", { href: `#/runs/${run.cloned_from}` }, `#${run.cloned_from}`) : null],
        ["sweep", run.sweep_id ? el("a", { href: `#/runs?sweep=${run.sweep_id}` }, `#${run.sweep_id}`) : null],
      ]));
      const metrics = await Api.get(`/api/runs/${id}/metrics`);
      const series = metrics.series || {};
      if (Object.keys(series).length) {
        await Charts.lossCurves($("chart-loss"), series);
        await Charts.metricCurves($("chart-metric"), series);
      } else {
        $("chart-loss").replaceChildren(el("p", { class: "empty-state" }, "No metric points yet."));
        $("chart-metric").replaceChildren();
      }
      renderMemory(run);
      const fid = (r && r.gradient_fidelity) || (run.memory && run.memory.extra && run.memory.extra.gradient_fidelity);
      $("fidelity-section").hidden = !(Array.isArray(fid) && fid.length && run.method.startsWith("meft"));
      if (!$("fidelity-section").hidden) await Charts.fidelity($("chart-fidelity"), fid);
      const log = $("run-log");
      const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.textContent = run.log_tail || "(empty)";
      if (atEnd) log.scrollTop = log.scrollHeight;
      const cfgRows = Object.entries(run.config).map(([key, value]) => ({ key, value: typeof value === "object" && value !== null ? JSON.stringify(value) : String(value) }));
      $("cfg-table").replaceChildren(el("tbody", {}, cfgRows.map((c) => el("tr", {}, el("th", { scope: "row" }, c.key), el("td", {}, c.value)))));
      downloads($("cfg-downloads"), { stem: `run-${id}-config`, local: async () => ({ columns: ["key", "value"], rows: cfgRows }) });
      $("run-detail").dataset.status = run.status;
    }

    function renderMemory(run) {
      const box = $("mem-body");
      const m = run.memory;
      if (!m) {
        const dnf = run.status === "does_not_fit" && run.result;
        box.replaceChildren(el("p", { class: "empty-state" }, dnf
          ? `Out of memory after reaching ${Api.fmtBytes(run.result.memory_reached_bytes)} (${run.result.memory_reached_how}); no step was measured.`
          : run.status === "succeeded" ? "This run stored no memory report (measure_memory was off)." : "No memory report yet: it is written after the measured step."));
        return;
      }
      const parts = Charts.memoryParts(m).filter(([, v]) => v !== null);
      const rows = [...parts.map(([part, bytes]) => ({ part, bytes })), { part: "measured peak", bytes: m.peak_bytes },
        { part: "peak activation", bytes: m.peak_activation_bytes }, { part: "process peak RSS (cross-check)", bytes: m.process_peak_rss_bytes }]
        .filter((x) => x.bytes !== null && x.bytes !== undefined).map((x) => ({ ...x, shown: Api.fmtBytes(x.bytes) }));
      const chart = el("div", { id: "chart-mem", class: "chart chart-short" });
      const dl = el("div", { class: "downloads" });
      box.replaceChildren(el("p", { class: "note" }, `One measured training step at batch shape [${(m.batch_shape || []).join(", ")}] on ${m.device} (${m.how}), ` +
        `${m.step_seconds ? `${m.step_seconds.toFixed(2)} s` : ""}. Parameters, gradients and optimizer state are counted from the tensors; ` +
        "stored activations are what autograd saves for backward; the peak activation is the highest rise above them during forward and backward."),
      chart, dl, el("div", { class: "table-wrap" }, el("table", { class: "data", id: "mem-table", "aria-labelledby": "mem-title" },
        el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "part"), el("th", { scope: "col" }, "memory"), el("th", { scope: "col" }, "bytes"))),
        el("tbody", {}, rows.map((x) => el("tr", {}, el("td", {}, x.part), el("td", {}, x.shown), el("td", { class: "num" }, x.bytes.toLocaleString())))))));
      downloads(dl, { stem: `run-${run.id}-memory`, local: async () => ({ columns: ["part", "bytes", "shown"], rows }) });
      guard(() => Charts.memoryBar(chart, m))();
    }

    const throttled = debounce(guard(refresh), 700);
    function onEvent(ev) { if (state.view === "run" && ev.id === state.detail.id) throttled(); }

    return { show, refresh, onEvent };
  })();

  // ================================================================================================ start
  function onRunEvent(ev) {
    Runs.onEvent(ev);
    Detail.onEvent(ev);
    if (["succeeded", "failed", "does_not_fit", "cancelled"].includes(ev.status)) Compare.refresh();
  }

  async function start() {
    // Start fetching Plotly at once when the first view draws charts; otherwise once the first view is up.
    const { parts, params } = parseHash();
    const charted = parts[0] !== "submit" && !(parts[0] === "runs" && !parts[1]);
    if (charted) Charts.ready().catch(() => {});
    if (parts[0] === "compare") Compare.prefetch(params.get("select") || "best");
    const [catalog, system] = await Promise.all([Api.get("/api/catalog"), Api.get("/api/system").catch(() => null)]);
    state.catalog = catalog;
    state.system = system;
    Compare.init();
    Runs.init();
    Submit.init();
    Api.subscribe(onRunEvent, (s) => {
      const live = $("live");
      live.textContent = { live: "● live", reconnecting: "reconnecting…", polling: "● polling" }[s] || s;
      live.dataset.state = s;
    });
    window.addEventListener("hashchange", route);
    await route();
    if (!charted) (window.requestIdleCallback || setTimeout)(() => Charts.ready().catch(() => {}));
  }

  guard(start)();
})();
