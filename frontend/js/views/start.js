/* mefts dashboard — the first start: on an empty database the landing view offers to import the benchmark rows that
   ship with mefts (docs/results) and to queue a small demo sweep (POST /api/start/import, /api/start/demo; the same
   as `mefts serve --demo`). One global, `FirstStart`. */
"use strict";

const FirstStart = (() => {
  const { $, el, flash, guard } = UI;
  let seq = 0;  // only the newest state renders (the view is left and re-entered while a request runs)

  /** Show the box while runs or bench rows are missing, with the action for each; hide it otherwise. */
  async function check() {
    const mine = ++seq;
    const s = await Api.get("/api/start");
    if (mine !== seq) return;
    const box = $("first-start");
    const canImport = s.bench_rows === 0 && s.shipped_rows > 0;
    const canDemo = s.runs === 0 && s.demo_sweep_id === null;
    box.hidden = s.runs > 0 || !(canImport || canDemo);  // once runs exist, the dashboard has its own content
    box.dataset.state = JSON.stringify({ runs: s.runs, bench_rows: s.bench_rows });
    if (box.hidden) return;
    box.replaceChildren(
      el("p", {}, el("strong", {}, s.runs === 0 && s.bench_rows === 0 ? "Nothing is stored yet. " : "Getting started. "),
        "Import the measured benchmark rows that ship with mefts to see memory against depth below, and queue a " +
        "small demo sweep to see runs arrive live. From a shell, ", el("code", {}, "mefts serve --demo"), " does both."),
      el("div", { class: "actions" },
        canImport ? el("button", { type: "button", id: "fs-import", class: "primary", onclick: guard(importRows) },
          `Import the ${s.shipped_rows} shipped benchmark rows`) : null,
        canDemo ? el("button", { type: "button", id: "fs-demo", onclick: guard(queueDemo) },
          "Queue a demo sweep (tiny-bert, 64 SST-2 sentences, 4 methods)") : null));
  }

  /** POST `path` with the button `id` disabled meanwhile; a failed request leaves it enabled, to try again. */
  async function act(id, path) {
    const button = $(id);
    button.disabled = true;
    try {
      return await Api.post(path);
    } finally {
      button.disabled = false;
    }
  }

  async function importRows() {
    const r = await act("fs-import", "/api/start/import");
    flash(`Imported ${r.stored} benchmark rows from ${r.files.join(", ")}.`);
    await check();
    UI.route();  // the landing view reloads: its bench curves now have rows
  }

  async function queueDemo() {
    const r = await act("fs-demo", "/api/start/demo");
    flash(`Queued the demo sweep: ${r.run_ids.length} runs.`, "info", ["See the runs", "#/runs"]);
    await check();
  }

  return { check };
})();
