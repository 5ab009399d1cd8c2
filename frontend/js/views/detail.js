/* mefts dashboard, view — Run detail: one run's facts, curves, memory and actions. One global, named as the view. */
"use strict";

const Detail = (() => {
  const { $, el, state, guard, debounce, downloads, badge } = UI;
  const DATA_SOURCE_TEXT = { hub: "the hub's official splits", packaged: "the packaged validation copy, re-split",
    local: "local files" };

  /** MEFT: one batch's reversible gradients against plain autograd's, checked before training (result.gradient_fidelity). */
  function gradientCheck(rows) {
    if (!Array.isArray(rows) || !rows.length) return null;
    const errors = rows.map((r) => r.rel_error).filter((e) => e !== null && e !== undefined);
    if (!errors.length) return `${rows.length} reversible layers: zero gradients, no ratio`;
    const worst = Math.max(...errors);
    const exact = worst === 0 && rows.every((r) => r.reconstruction_error === 0);
    return `${rows.length} reversible layers: ${exact ? "bit-identical to plain autograd" : `largest relative error ${worst.toExponential(1)}`}`;
  }

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
      el("div", { id: "run-model", class: "downloads", hidden: true }),
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

  // The newest refresh: navigating from run to run, or live events arriving, start refreshes whose answers can come
  // back out of order; an older one stops at its next await instead of drawing the previous run's curves.
  let refreshSeq = 0;
  async function refresh() {
    const id = state.detail.id;
    if (id === null) return;
    const seq = ++refreshSeq;
    const current = () => seq === refreshSeq && state.detail.id === id;
    let run;
    try { run = await Api.get(`/api/runs/${id}`); } catch (e) {
      if (!current()) return;
      if (e.status === 404) { $("run-detail").replaceChildren(el("p", { class: "empty-state" }, `Run #${id} does not exist. `, el("a", { href: "#/runs" }, "All runs"))); return; }
      throw e;
    }
    if (!current()) return;
    state.detail.run = run;
    if (run.status === "queued" && !state.system) state.system = await Api.get("/api/system");
    if (!current()) return;
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
      ["gradient check", gradientCheck(r.gradient_fidelity)],
      ["trainable / total params", run.trainable_params ? `${run.trainable_params.toLocaleString()} / ${(run.total_params || 0).toLocaleString()}` : null],
      ["attempts", `${run.attempts} of ${run.max_attempts}`],
      ["resumed", run.resumed_from_epoch ? `attempt ${run.attempts} continued from the checkpoint of epoch ${run.resumed_from_epoch}` : null],
      ["device", run.device_used || run.device],
      ["created", Api.fmtTime(run.created_at)], ["started", Api.fmtTime(run.started_at)], ["finished", Api.fmtTime(run.finished_at)],
      ["duration", Api.fmtDuration(run.duration_seconds)], ["worker", run.worker_id], ["git revision", run.git_revision],
      ["versions", run.versions ? Object.entries(run.versions).map(([k, v]) => `${k} ${v}`).join(", ") : null],
      ["data source", run.data_source ? `${run.data_source}${DATA_SOURCE_TEXT[run.data_source] ? ` (${DATA_SOURCE_TEXT[run.data_source]})` : ""}` : null],
      ["split", r.split], ["cloned from", run.cloned_from ? el("a", { href: `#/runs/${run.cloned_from}` }, `#${run.cloned_from}`) : null],
      ["sweep", run.sweep_id ? el("a", { href: `#/runs?sweep=${run.sweep_id}` }, `#${run.sweep_id}`) : null],
    ]));
    renderModel(run);
    const metrics = await Api.get(`/api/runs/${id}/metrics`);
    if (!current()) return;
    const series = metrics.series || {};
    if (Object.keys(series).length) {
      await Charts.lossCurves($("chart-loss"), series);
      await Charts.metricCurves($("chart-metric"), series);
      if (!current()) return;
    } else {
      $("chart-loss").replaceChildren(el("p", { class: "empty-state" }, "No metric points yet."));
      $("chart-metric").replaceChildren();
    }
    renderMemory(run);
    const fid = (r && r.gradient_fidelity) || (run.memory && run.memory.extra && run.memory.extra.gradient_fidelity);
    $("fidelity-section").hidden = !(Array.isArray(fid) && fid.length && run.method.startsWith("meft"));
    if (!$("fidelity-section").hidden) await Charts.fidelity($("chart-fidelity"), fid);
    if (!current()) return;
    const log = $("run-log");
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent = run.log_tail || "(empty)";
    if (atEnd) log.scrollTop = log.scrollHeight;
    const cfgRows = Object.entries(run.config).map(([key, value]) => ({ key, value: typeof value === "object" && value !== null ? JSON.stringify(value) : String(value) }));
    $("cfg-table").replaceChildren(el("tbody", {}, cfgRows.map((c) => el("tr", {}, el("th", { scope: "row" }, c.key), el("td", {}, c.value)))));
    downloads($("cfg-downloads"), { stem: `run-${id}-config`, local: async () => ({ columns: ["key", "value"], rows: cfgRows }) });
    $("run-detail").dataset.status = run.status;
  }

  /** The trained model (best dev epoch) as a tar.gz, when the run stored one: a link with its size and checksum. */
  function renderModel(run) {
    const box = $("run-model");
    box.hidden = !run.artifact_url;
    if (!run.artifact_url) { box.replaceChildren(); return; }
    box.replaceChildren(el("span", { class: "dl-label" }, "Trained model:"),
      el("a", { href: run.artifact_url, download: "", class: "dl", id: "model-download" }, `Download model (${Api.fmtBytes(run.artifact_bytes)}, tar.gz)`),
      el("span", { class: "dl-extra", title: "sha256 of the tar.gz" }, `sha256 ${run.artifact_sha256.slice(0, 16)}…`));
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
