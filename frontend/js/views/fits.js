/* mefts dashboard, view — Fits: what fits on a card. For a memory budget, backbone, sequence length and dtype, one bar
   per method of the largest batch (GET /api/fits), with the peak, step time and tokens/s in the hover and the table;
   every figure says whether it was measured, interpolated or estimated. One global, named as the view. */
"use strict";

const Fits = (() => {
  const { $, el, state, debounce } = UI;
  const PRESETS = [16, 24, 40, 48, 80];
  const DTYPES = ["float32", "bfloat16", "float16"];
  const DEVICES = [["cuda", "GPU (CUDA)"], ["cpu", "CPU"]];  // the kind of memory the budget is
  let seq = 0;  // request counter: only the newest request's answer renders (the user types)
  let inited = false;

  const opts = () => ({ budget: $("fits-budget").value.trim(), backbone: $("fits-backbone").value,
    seq_len: $("fits-seq").value.trim(), dtype: $("fits-dtype").value, device: $("fits-device").value });

  function init() {
    if (inited) return;
    inited = true;
    $("fits-presets").replaceChildren(...PRESETS.map((g) => el("button", { type: "button", class: "preset",
      "data-gib": g, onclick: () => { $("fits-budget").value = `${g}GiB`; changed(); } }, `${g} GiB`)));
    const names = (state.catalog.backbones || []).map((b) => b.name);
    $("fits-backbone").replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    if (names.includes("bert-base")) $("fits-backbone").value = "bert-base";
    $("fits-dtype").replaceChildren(...DTYPES.map((d) => el("option", { value: d }, d)));
    $("fits-device").replaceChildren(...DEVICES.map(([d, label]) => el("option", { value: d }, label)));
    const typed = debounce(changed, 300);
    $("fits-budget").addEventListener("input", typed);
    $("fits-seq").addEventListener("input", typed);
    $("fits-backbone").addEventListener("change", changed);
    $("fits-dtype").addEventListener("change", changed);
    $("fits-device").addEventListener("change", changed);
  }

  function changed() {
    const q = new URLSearchParams(opts());
    history.replaceState(null, "", `#/fits?${q}`);
    return load();
  }

  async function show(params) {
    init();
    for (const [key, id] of [["budget", "fits-budget"], ["backbone", "fits-backbone"], ["seq_len", "fits-seq"],
      ["dtype", "fits-dtype"], ["device", "fits-device"]]) if (params.has(key)) $(id).value = params.get(key);
    return load();
  }

  const fmtNum = (v, d = 0) => v.toLocaleString("en-US", { maximumFractionDigits: d });
  const FORMAT = {
    max_batch: (v) => fmtNum(v),
    peak_bytes: (v) => Api.fmtBytes(v),
    step_seconds: (v) => `${v.toPrecision(3)} s`,
    tokens_per_second: (v) => fmtNum(v),
  };
  const figureText = (key, f) => (f.value === null ? "—" : FORMAT[key](f.value));

  /** One cell: the figure and its source, the how in the tooltip. */
  const cell = (key, f) => el("td", { class: `fit fit-${f.source}`, "data-key": key, "data-source": f.source,
    "data-value": f.value === null ? "" : String(f.value), title: f.how },
  figureText(key, f), " ", el("span", { class: `src src-${f.source}` }, f.source));

  async function load() {
    const mine = ++seq;
    const box = $("view-fits");
    box.dataset.state = "loading";
    const o = opts();
    let data;
    try {
      data = await Api.get("/api/fits", o);
    } catch (e) {
      if (mine !== seq) return;
      const items = e instanceof Api.ApiError && e.fieldErrors.length ? e.fieldErrors : null;
      $("fits-note").textContent = items ? items.map((d) => `${d.loc.slice(1).join(".")}: ${d.msg}`).join("; ")
        : `Request failed: ${e.message}`;
      $("fits-note").className = "note warn";
      box.dataset.state = "error";
      return;
    }
    if (mine !== seq) return;  // a newer request started while this one ran: it renders, not this one
    $("fits-note").className = "note";
    $("fits-note").textContent = `${data.backbone} (${data.layers ?? "?"} layers), sequence length ${data.seq_len}, ` +
      `${data.dtype}, budget ${Api.fmtBytes(data.budget_bytes)} on ${data.device}. Measured: a stored run or bench ` +
      "row at that point; interpolated: linear in the batch between two measured points; estimated: the analytic " +
      "estimator (memory) or a timed step scaled with the batch (time). Hover a cell for how.";
    renderTable(data);
    await renderChart(data);
    if (mine === seq) box.dataset.state = "ready";
  }

  function renderTable(data) {
    const keys = ["max_batch", "peak_bytes", "step_seconds", "tokens_per_second"];
    const head = el("thead", {}, el("tr", {}, ["method", "largest batch", "peak at that batch", "step time",
      "tokens/s"].map((h) => el("th", { scope: "col" }, h))));
    const rows = data.methods.map((m) => el("tr", { "data-method": m.method },
      el("th", { scope: "row" }, m.method), ...keys.map((k) => cell(k, m[k]))));
    $("fits-table").replaceChildren(head, el("tbody", {}, rows));
  }

  async function renderChart(data) {
    const Plotly = await Charts.ready();
    const ms = data.methods;
    const colors = Charts.colorMap(ms.map((m) => m.method));
    const narrow = $("fits-chart").clientWidth < 640;
    const line = (label, key, m) => `${label}: ${figureText(key, m[key])} (${m[key].source})`;
    const trace = {
      type: "bar", x: ms.map((m) => m.method), y: ms.map((m) => m.max_batch.value ?? 0),
      marker: { color: ms.map((m) => colors[m.method]), opacity: ms.map((m) => (m.max_batch.source === "measured" ? 1 : 0.75)) },
      // a narrow window has room for the number only; the source stays in the hover and the table
      text: ms.map((m) => figureText("max_batch", m.max_batch) + (narrow ? "" : ` · ${m.max_batch.source}`)),
      textposition: "outside",
      cliponaxis: false,
      customdata: ms.map((m) => [m.max_batch.source, m.peak_bytes.source, m.step_seconds.source]),
      hovertext: ms.map((m) => [line("largest batch", "max_batch", m), line("peak", "peak_bytes", m),
        line("step time", "step_seconds", m), line("tokens/s", "tokens_per_second", m)].join("<br>")),
      hovertemplate: "<b>%{x}</b><br>%{hovertext}<extra></extra>",
    };
    const div = $("fits-chart");
    await Plotly.react(div, [trace], {
      ...Charts.BASE_LAYOUT, height: 380, margin: { ...Charts.BASE_LAYOUT.margin, t: 36, b: 60 },
      title: { text: `Largest batch in ${Api.fmtBytes(data.budget_bytes)} at sequence length ${data.seq_len}`, font: { size: 13 } },
      xaxis: { ...Charts.AXIS }, yaxis: { ...Charts.AXIS, title: { text: "batch size" }, rangemode: "tozero" },
    }, Charts.CONFIG);
  }

  return { show };
})();
