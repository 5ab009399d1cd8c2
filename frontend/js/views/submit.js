/* mefts dashboard, view — Submit: the form for one run or a grid, with the pre-flight memory estimate. One global, named as the view. */
"use strict";

const Submit = (() => {
  const { $, el, state, flash, guard, debounce, navigate } = UI;

  const MAIN_HP = ["learning_rate", "batch_size", "epochs", "max_seq_len", "max_train_samples", "max_eval_samples"];
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

  /** The label the run tables give a method with options, from the catalog (mefts_core.methods.method_label);
      null when the options are invalid (the estimate then says why). */
  const labels = new Map();
  async function methodLabel(method, opts) {
    const key = JSON.stringify([method, opts]);
    if (!labels.has(key)) {
      labels.set(key, Api.post("/api/catalog/label", { method, method_options: opts })
        .then((r) => r.method_label, (e) => { if (e instanceof Api.ApiError && e.status === 422) return null; throw e; }));
    }
    return labels.get(key);
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
      const [label, all, est] = await Promise.all([methodLabel(method, methodOptions(method)),
        runsFor(backbone, method), estimateFor(backbone, method, B, T)]);
      const runs = label === null ? [] : all.filter((r) => r.method_label === label);
      items.push(estimateItem(backbone, label || method, runs, B, T, budget, est));
    }
    if (seq !== preflightSeq) return;
    box.replaceChildren(
      el("p", { class: "note" }, `At batch ${B}, sequence length ${T}. The estimate is analytic (one AdamW step; ` +
        "mefts_core.measure.estimate). Measured runs, where there are any, come first: memory grows with batch and sequence " +
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
      if (isBool(h.type)) return field(id, label, el("input", { type: "checkbox", id, checked: !!h.default }), h.help);
      return field(id, label, el("input", { type: "text", id, inputmode: "decimal",
        placeholder: h.default === null ? "default" : `default: ${h.default}` }), h.help);
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

  let cloneSeq = 0;  // the newest clone asked for: a run that answers after the user moved on is not filled in
  function endClone() {
    cloneSeq++;
    state.clone = null;
    $("clone-banner").hidden = true;
  }

  async function startClone(id) {
    const seq = ++cloneSeq;
    const run = await Api.get(`/api/runs/${id}`);
    if (seq !== cloneSeq) return;
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
