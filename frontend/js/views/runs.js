/* mefts dashboard, view — Runs: the sortable, filterable list of runs, with live status updates. One global, named as the view. */
"use strict";

const Runs = (() => {
  const { $, el, state, flash, guard, debounce, navigate, downloads, badge, STATUS_TEXT } = UI;

  const COLS = [
    { key: "pick", label: "Pick" },
    { key: "id", label: "Run", sort: "id" },
    { key: "method_label", label: "Method", sort: "method_label" },
    { key: "backbone", label: "Backbone", sort: "backbone" },
    { key: "task", label: "Task", sort: "task" },
    { key: "data_source", label: "Data", sort: "data_source", opt: true },
    { key: "seed", label: "Seed", sort: "seed", opt: true },
    { key: "batch_size", label: "Batch", sort: "batch_size", opt: true },
    { key: "max_seq_len", label: "Seq", sort: "max_seq_len", opt: true },
    { key: "learning_rate", label: "LR", sort: "learning_rate", opt: true },
    { key: "status", label: "Status", sort: "status" },
    { key: "score", label: "Score", sort: "score" },
    { key: "stored_activation_bytes", label: "Stored act.", sort: "stored_activation_bytes" },
    { key: "peak_bytes", label: "Peak", sort: "peak_bytes", opt: true },
    { key: "step_seconds", label: "Step time", opt: true },
    { key: "tokens_per_second", label: "Tokens/s", opt: true },
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
      case "pick": return [el("input", { type: "checkbox", class: "pick", id: `pick-${r.id}`,
        checked: Diff.selection().has(r.id) ? "" : null, onchange: (e) => pick(r.id, e.target.checked) }),
      el("label", { for: `pick-${r.id}`, class: "sr-only" }, `Select run ${r.id} to compare`)];
      case "id": return el("a", { href: `#/runs/${r.id}` }, `#${r.id}`, r.name ? el("div", { class: "sub" }, r.name) : "");
      case "status": return statusCell(r);
      case "score": return r.score === null ? "" : el("span", { title: r.main_metric }, Api.fmtScore(r.score));
      case "stored_activation_bytes": case "peak_bytes": return Api.fmtBytes(r[c.key]);
      case "created_at": return Api.fmtTime(r.created_at);
      case "duration_seconds": return Api.fmtDuration(r.duration_seconds);
      case "step_seconds": return r.step_seconds ? `${(1000 * r.step_seconds).toPrecision(3)} ms` : "";
      case "tokens_per_second": return r.tokens_per_second ? Math.round(r.tokens_per_second).toLocaleString("en-US") : "";
      case "learning_rate": return r.learning_rate === null ? "default" : String(r.learning_rate);
      case "actions": return actions(r);
      default: return r[c.key] === null || r[c.key] === undefined ? "" : String(r[c.key]);
    }
  }

  /** Tick or untick a run for Compare runs; the button says how many are ticked. */
  function pick(id, on) {
    const sel = Diff.selection();
    if (on) sel.add(id); else sel.delete(id);
    syncPick();
  }

  function syncPick() {
    const n = Diff.selection().size;
    $("diff-btn").disabled = n < 2;
    $("diff-btn").textContent = n ? `Compare selected (${n})` : "Compare selected";
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
    if (page.items.some((r) => r.status === "queued")) await loadSystem();
    if (seq !== state.runs.seq) return;  // a newer load started while the system answered: it renders, not this one
    state.runs.page = page;
    state.runs.byId = new Map(page.items.map((r) => [r.id, r]));
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
    const columns = ["id", "status", "method_label", "backbone", "task", "data_source", "seed", "batch_size", "max_seq_len",
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
    $("diff-btn").addEventListener("click", () => navigate(`#/diff?ids=${[...Diff.selection()].sort((a, b) => a - b).join(",")}`));
    $("diff-clear").addEventListener("click", () => {
      Diff.selection().clear();
      document.querySelectorAll("#runs-table input.pick").forEach((b) => { b.checked = false; });
      syncPick();
    });
    syncPick();
    setInterval(() => { if (state.view === "runs" && !document.hidden) guard(loadSystem)(); }, 10000);
  }

  return { show, init, onEvent, reload, act, reasonOf, actions };
})();
