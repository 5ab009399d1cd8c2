/* mefts dashboard: figures (Plotly.js, served from the installed plotly package) and the shaping of results data
   for them: the memory–accuracy scatter with its Pareto front, the method × backbone pivot, the run curves, the
   memory breakdown and the per-layer gradient fidelity. Defines one global, `Charts`. */
"use strict";

const Charts = (() => {
  /** Plotly.js, loaded on first use from /static/plotly.min.js (4.8 MB, served from the installed plotly package):
      views without charts never wait for it. Resolves with window.Plotly. */
  let loading = null;
  function ready() {
    if (window.Plotly) return Promise.resolve(window.Plotly);
    if (!loading) {
      loading = new Promise((resolve, reject) => {
        const script = document.createElement("script");
        script.id = "plotly-js";
        script.src = "/static/plotly.min.js";
        script.async = true;
        script.addEventListener("load", () => (window.Plotly ? resolve(window.Plotly) : reject(new Error("no Plotly"))));
        script.addEventListener("error", () => { loading = null; reject(new Error("/static/plotly.min.js did not load")); });
        document.head.append(script);
      });
    }
    return loading;
  }

  const CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] };
  const FONT = { family: "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size: 12, color: "#1f2933" };
  const BASE_LAYOUT = {
    font: FONT, paper_bgcolor: "#ffffff", plot_bgcolor: "#ffffff", hoverlabel: { align: "left" },
    margin: { l: 60, r: 16, t: 28, b: 48 },
  };
  const AXIS = { gridcolor: "#e4e7eb", zerolinecolor: "#cbd2d9", linecolor: "#9aa5b1", automargin: true };

  // Fixed colours for the methods, so a method keeps its colour across views; variants take the rest.
  const METHOD_COLORS = {
    full: "#3e4c59", lora: "#2f80ed", adapter: "#27ae60", bitfit: "#f2994a", meft1: "#c0392b", meft2: "#8e44ad",
    meft3: "#d81b60",
  };
  const EXTRA_COLORS = ["#00897b", "#6d4c41", "#fbc02d", "#5c6bc0", "#7cb342", "#ec407a", "#26c6da", "#8d6e63"];
  const SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "star", "cross", "pentagon", "hexagon"];

  function colorMap(labels) {
    const out = {};
    let next = 0;
    for (const label of labels) {
      out[label] = METHOD_COLORS[label] || EXTRA_COLORS[next++ % EXTRA_COLORS.length];
    }
    return out;
  }

  /** The memory measures the compare view can plot, by key: the results columns behind each. */
  const MEMORY = {
    stored: { label: "Stored activations", mean: "stored_activation_bytes_mean", std: "stored_activation_bytes_std",
      saving: "activation_saving_vs_full", short: "act." },
    peak: { label: "Peak memory", mean: "peak_bytes_mean", std: "peak_bytes_std", saving: "peak_saving_vs_full",
      short: "peak" },
    peak_act: { label: "Peak activation", mean: "peak_activation_bytes_mean", std: null, saving: null,
      short: "peak act." },
  };

  /** Savings of `row` against full fine-tuning of its backbone and task for a memory measure (0.84 = 84% less). */
  function saving(row, rows, memKey) {
    const m = MEMORY[memKey];
    if (m.saving) return row[m.saving];
    const full = rows.find((r) => r.method === "full" && r.backbone === row.backbone && r.task === row.task);
    if (!full || !full[m.mean] || row[m.mean] === null || row[m.mean] === undefined) return null;
    return 1 - row[m.mean] / full[m.mean];
  }

  /** Indices of the points on the Pareto front: no other point has lower (or equal) memory and a higher
      (or equal) score, one of them strictly. Returned in order of increasing memory. */
  function paretoFront(points) {
    const order = points.map((p, i) => i).sort((a, b) => points[a].x - points[b].x || points[b].y - points[a].y);
    const front = [];
    let best = -Infinity;
    for (const i of order) {
      if (points[i].y > best) { front.push(i); best = points[i].y; }
    }
    return front;
  }

  const runList = (row) => { try { return JSON.parse(row.run_ids || "[]"); } catch (_) { return []; } };

  /** Scatter of score against memory, one point per results row (mean over seeds, error bars = std).
      Colour = method label, symbol = backbone, dashed step line = Pareto front. Returns {shown, hidden}. */
  async function scatter(div, rows, { memKey = "stored", log = false, onPoint } = {}) {
    const Plotly = await ready();
    const m = MEMORY[memKey];
    const usable = rows.filter((r) => r.score_mean !== null && r[m.mean] !== null && r[m.mean] > 0);
    const hidden = rows.length - usable.length;
    const { div: scale, unit } = Api.byteUnit(Math.max(0, ...usable.map((r) => r[m.mean])));
    const labels = [...new Set(usable.map((r) => r.method))].sort();
    const backbones = [...new Set(usable.map((r) => r.backbone))].sort();
    const colors = colorMap(labels);
    const symbol = Object.fromEntries(backbones.map((b, i) => [b, SYMBOLS[i % SYMBOLS.length]]));
    const pts = usable.map((r) => ({ x: r[m.mean] / scale, y: r.score_mean, row: r }));
    const front = paretoFront(pts);
    const onFront = new Set(front);
    const metricName = usable.length ? usable[0].main_metric : "score";
    const pct = usable.every((r) => Math.abs(r.score_mean) <= 1);
    const yScale = pct ? 100 : 1;

    const hover = (p, i) => {
      const r = p.row;
      const ids = runList(r);
      return [
        `<b>${r.method}</b> · ${r.backbone} · ${r.task}`,
        `${r.main_metric}: ${Api.fmtPm(r.score_mean, r.score_std)}${pct ? " %" : ""} (n=${r.n}, seeds ${r.seeds})`,
        `${m.label.toLowerCase()}: ${Api.fmtPm(r[m.mean], m.std ? r[m.std] : null, (v) => Api.fmtBytes(v))}`,
        r.method !== "full" && saving(r, rows, memKey) !== null
          ? `vs full: ${Api.fmtSaving(saving(r, rows, memKey))} ${m.short}` : "",
        `run${ids.length > 1 ? "s" : ""} ${ids.map((id) => `#${id}`).join(", ")}`,
        onFront.has(i) ? "<i>on the Pareto front</i>" : "",
      ].filter(Boolean).join("<br>");
    };

    const traces = [];
    for (const label of labels) {
      const idx = pts.map((p, i) => i).filter((i) => pts[i].row.method === label);
      traces.push({
        type: "scatter", mode: "markers", name: label, legendgroup: label, showlegend: false,
        x: idx.map((i) => pts[i].x), y: idx.map((i) => pts[i].y * yScale),
        error_y: { type: "data", array: idx.map((i) => (pts[i].row.score_std ?? 0) * yScale), visible: true,
          thickness: 1, width: 3, color: colors[label] },
        error_x: { type: "data", array: idx.map((i) => (m.std ? (pts[i].row[m.std] ?? 0) / scale : 0)), visible: true,
          thickness: 1, width: 3, color: colors[label] },
        marker: { color: colors[label], size: 11, symbol: idx.map((i) => symbol[pts[i].row.backbone]),
          line: { color: idx.map((i) => (onFront.has(i) ? "#111" : "#fff")), width: idx.map((i) => (onFront.has(i) ? 1.5 : 1)) } },
        text: idx.map((i) => hover(pts[i], i)), hovertemplate: "%{text}<extra></extra>",
        customdata: idx.map((i) => [runList(pts[i].row).join(","), pts[i].row.backbone, pts[i].row.n]),
        meta: { kind: "results" },
      });
    }
    if (front.length) {
      traces.push({
        type: "scatter", mode: "lines", name: "Pareto front", line: { shape: "hv", dash: "dash", color: "#52606d", width: 1.5 },
        x: front.map((i) => pts[i].x), y: front.map((i) => pts[i].y * yScale), hoverinfo: "skip",
        meta: { kind: "pareto" },
      });
    }
    // Legend-only entries: a colour square per method, a grey symbol per backbone.
    labels.forEach((label) => traces.push({ type: "scatter", mode: "markers", x: [null], y: [null], name: label,
      legendgroup: label, legendgrouptitle: label === labels[0] ? { text: "Method" } : undefined,
      marker: { color: colors[label], symbol: "square", size: 10 }, hoverinfo: "skip", meta: { kind: "legend" } }));
    backbones.forEach((b, i) => traces.push({ type: "scatter", mode: "markers", x: [null], y: [null], name: b,
      legendgroup: `backbone:${b}`, legendgrouptitle: i === 0 ? { text: "Backbone" } : undefined,
      marker: { color: "#7b8794", symbol: symbol[b], size: 10 }, hoverinfo: "skip", meta: { kind: "legend" } }));

    const narrow = div.clientWidth < 640;
    const layout = {
      ...BASE_LAYOUT,
      xaxis: { ...AXIS, title: { text: `${m.label} (${unit}${log ? ", log scale" : ""}) → less is better` },
        type: log ? "log" : "linear" },
      yaxis: { ...AXIS, title: { text: `${metricName}${pct ? " (%)" : ""} → higher is better` } },
      legend: narrow ? { orientation: "h", y: -0.3, x: 0 } : { x: 1.02, y: 1, groupclick: "toggleitem" },
      margin: { ...BASE_LAYOUT.margin, r: narrow ? 16 : 150 },
      hovermode: "closest",
    };
    await Plotly.react(div, traces, layout, CONFIG);
    if (onPoint && !div.__meftsClick) {
      div.__meftsClick = true;
      div.on("plotly_click", (ev) => {
        const p = ev.points && ev.points[0];
        if (p && p.customdata) onPoint(String(p.customdata[0]).split(",").filter(Boolean).map(Number));
      });
    }
    return { shown: usable.length, hidden };
  }

  /** Method × backbone pivot of results rows (one task): cells, best score per backbone, savings. */
  function pivot(rows, memKey) {
    const methods = [...new Set(rows.map((r) => r.method))].sort((a, b) =>
      (a === "full" ? -1 : b === "full" ? 1 : a.localeCompare(b)));
    const backbones = [...new Set(rows.map((r) => r.backbone))].sort();
    const cells = {};
    const top = {};
    for (const r of rows) {
      (cells[r.method] ||= {})[r.backbone] = r;
      if (r.score_mean !== null && !(top[r.backbone] >= r.score_mean)) top[r.backbone] = r.score_mean;
    }
    // Every cell that reaches the best score of its backbone (ties share the mark).
    const best = Object.fromEntries(backbones.map((b) => [b, new Set(rows.filter((r) => r.backbone === b &&
      r.score_mean !== null && r.score_mean === top[b]))]));
    const flat = [];
    const m = MEMORY[memKey];
    for (const method of methods) {
      const out = { method };
      for (const b of backbones) {
        const r = cells[method] && cells[method][b];
        if (!r) { out[b] = ""; continue; }
        const s = saving(r, rows, memKey);
        out[b] = [Api.fmtPm(r.score_mean, r.score_std), Api.fmtBytes(r[m.mean]),
          method !== "full" && s !== null ? `${Api.fmtSaving(s)} ${m.short}` : "",
          best[b].has(r) ? "★" : ""].filter(Boolean).join(" ");
      }
      flat.push(out);
    }
    return { methods, backbones, cells, best, flat, columns: ["method", ...backbones] };
  }

  // ------------------------------------------------------------------------------------------------ run detail
  async function lossCurves(div, series) {
    const Plotly = await ready();
    const traces = [];
    const add = (name, key, mode, extra = {}) => {
      const s = series[key];
      if (s && s.length) traces.push({ type: "scatter", mode, name, x: s.map((p) => p.step), y: s.map((p) => p.value), ...extra });
    };
    add("loss per step", "step_loss", "lines", { line: { color: "#9aa5b1", width: 1 } });
    add("train loss (epoch mean)", "train_loss", "lines+markers", { line: { color: "#2f80ed" } });
    add("dev loss", "dev_loss", "lines+markers", { line: { color: "#c0392b" } });
    await Plotly.react(div, traces, { ...BASE_LAYOUT, title: { text: "Loss", font: { size: 13 } },
      xaxis: { ...AXIS, title: { text: "step" } }, yaxis: { ...AXIS, title: { text: "loss" } },
      legend: { orientation: "h", y: -0.25 } }, CONFIG);
    return traces.length;
  }

  async function metricCurves(div, series) {
    const Plotly = await ready();
    const keys = Object.keys(series).filter((k) => (k.startsWith("dev_") || k.startsWith("test_")) && !k.endsWith("_loss"));
    const traces = keys.map((k) => ({ type: "scatter", mode: "lines+markers", name: k,
      x: series[k].map((p) => p.epoch), y: series[k].map((p) => p.value) }));
    const values = traces.flatMap((t) => t.y);
    const unit = values.length && values.every((v) => v >= 0 && v <= 1);
    await Plotly.react(div, traces, { ...BASE_LAYOUT, title: { text: "Dev metrics per epoch", font: { size: 13 } },
      xaxis: { ...AXIS, title: { text: "epoch" }, dtick: 1 },
      yaxis: { ...AXIS, title: { text: "value" }, range: unit ? [0, 1.02] : undefined },
      legend: { orientation: "h", y: -0.25 } }, CONFIG);
    return traces.length;
  }

  /** The parts of a memory report, in stacking order: [label, bytes, colour]. */
  function memoryParts(mem) {
    const n = (v) => (v === null || v === undefined ? null : v);
    const frozen = mem.param_bytes !== null && mem.trainable_param_bytes !== null
      ? mem.param_bytes - mem.trainable_param_bytes : null;
    const transient = mem.peak_activation_bytes !== null && mem.stored_activation_bytes !== null
      ? Math.max(0, mem.peak_activation_bytes - mem.stored_activation_bytes) : null;
    return [
      ["parameters (frozen)", frozen, "#9aa5b1"],
      ["parameters (trainable)", n(mem.trainable_param_bytes), "#3e4c59"],
      ["gradients", n(mem.grad_bytes), "#f2994a"],
      ["optimizer state", n(mem.optimizer_bytes), "#27ae60"],
      ["stored activations", n(mem.stored_activation_bytes), "#2f80ed"],
      ["peak activation above stored", transient, "#c0392b"],
    ];
  }

  async function memoryBar(div, mem) {
    const Plotly = await ready();
    const parts = memoryParts(mem).filter(([, v]) => v !== null);
    const total = parts.reduce((s, [, v]) => s + v, 0);
    const { div: scale, unit } = Api.byteUnit(Math.max(total, mem.peak_bytes || 0));
    const traces = parts.map(([name, v, color]) => ({
      type: "bar", orientation: "h", name, x: [v / scale], y: ["this run"], marker: { color },
      hovertemplate: `${name}: ${Api.fmtBytes(v)}<extra></extra>`,
    }));
    const shapes = [];
    const annotations = [];
    if (mem.peak_bytes) {
      shapes.push({ type: "line", x0: mem.peak_bytes / scale, x1: mem.peak_bytes / scale, yref: "paper", y0: 0, y1: 1,
        line: { dash: "dash", color: "#111", width: 1.5 } });
      annotations.push({ x: mem.peak_bytes / scale, yref: "paper", y: 1.12, showarrow: false, xanchor: "right",
        text: `measured peak ${Api.fmtBytes(mem.peak_bytes)} ┐`, font: { size: 11 } });
    }
    await Plotly.react(div, traces, { ...BASE_LAYOUT, barmode: "stack", height: 240, shapes, annotations,
      margin: { l: 16, r: 16, t: 36, b: 30 }, xaxis: { ...AXIS, ticksuffix: ` ${unit}` },
      yaxis: { ...AXIS, showticklabels: false }, legend: { orientation: "h", y: -0.35, traceorder: "normal" } }, CONFIG);
  }

  async function fidelity(div, rows) {
    const Plotly = await ready();
    const x = rows.map((r) => `layer ${r.layer}`);
    const traces = [
      { type: "bar", name: "gradient cosine (reversible vs autograd)", x, y: rows.map((r) => r.cosine), marker: { color: "#2f80ed" } },
      { type: "scatter", mode: "markers+lines", name: "relative gradient error", x, y: rows.map((r) => r.rel_error),
        yaxis: "y2", marker: { color: "#c0392b" } },
    ];
    await Plotly.react(div, traces, { ...BASE_LAYOUT, height: 280, yaxis: { ...AXIS, title: { text: "cosine" }, range: [0, 1.05] },
      yaxis2: { ...AXIS, ...errorAxis(rows.map((r) => r.rel_error)), overlaying: "y", side: "right" },
      legend: { orientation: "h", y: -0.3 } }, CONFIG);
  }

  /** The right axis of the fidelity chart. A log axis has no place for 0, and with every error 0 (the usual case:
      reversible gradients are often bit-identical) Plotly invented a range with ticks like "5,781.454": a zero-only
      axis shows one tick "0"; otherwise one tick per decade in e-notation, spanning the positive errors. */
  function errorAxis(errors) {
    const positive = errors.filter((e) => e !== null && e !== undefined && e > 0);
    if (!positive.length) {
      return { title: { text: "rel. error (all 0)" }, type: "linear", range: [-0.05, 1.05], tickvals: [0], ticktext: ["0"] };
    }
    const lo = Math.floor(Math.log10(Math.min(...positive)));
    const hi = Math.max(lo + 1, Math.ceil(Math.log10(Math.max(...positive))));
    return { title: { text: "rel. error" }, type: "log", range: [lo, hi], dtick: 1, exponentformat: "e", showexponent: "all" };
  }

  /** Memory of `mefts bench` rows (GET /api/bench) against `xKey` ("layers" or "seq_len"): one line per backbone ×
      method at fixed other settings (the other axis, batch, dtype, device), drawn where it has two or more x values.
      Resolves with the number of lines. */
  async function benchCurves(div, rows, xKey) {
    const Plotly = await ready();
    const other = xKey === "layers" ? "seq_len" : "layers";
    const groups = new Map();
    for (const r of rows) {
      if (r.status && r.status !== "ok") continue;
      if (r.peak_bytes === null || r.peak_bytes === undefined || r[xKey] === null) continue;
      const key = [r.backbone, r.method, r[other], r.batch_size, r.dtype, r.device].join("|");
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(r);
    }
    const lines = [...groups.values()].filter((g) => new Set(g.map((r) => r[xKey])).size >= 2);
    const colors = colorMap([...new Set(lines.map((g) => g[0].method.split(/[-+(]/)[0]))]);
    const MiB = 2 ** 20;
    const traces = lines.map((g) => {
      g.sort((a, b) => a[xKey] - b[xKey]);
      const r0 = g[0];
      const fixed = xKey === "layers" ? `T=${r0.seq_len}` : `L=${r0.layers}`;
      return {
        type: "scatter", mode: "lines+markers", name: `${r0.method} · ${r0.backbone} (${fixed}, B=${r0.batch_size})`,
        x: g.map((r) => r[xKey]), y: g.map((r) => r.peak_bytes / MiB),
        line: { color: colors[r0.method.split(/[-+(]/)[0]], dash: r0.method.includes("+gc") ? "dash" : "solid" },
        customdata: g.map((r) => [(r.stored_activation_bytes || 0) / MiB, (r.peak_activation_bytes || 0) / MiB]),
        hovertemplate: "%{fullData.name}<br>" + (xKey === "layers" ? "layers" : "seq len") +
          " %{x}<br>peak %{y:.1f} MiB<br>peak act. %{customdata[1]:.1f} MiB<br>stored act. %{customdata[0]:.1f} MiB<extra></extra>",
      };
    });
    await Plotly.react(div, traces, { ...BASE_LAYOUT, height: 320,
      title: { text: `Peak memory vs ${xKey === "layers" ? "depth" : "sequence length"}`, font: { size: 13 } },
      xaxis: { ...AXIS, title: { text: xKey === "layers" ? "layers" : "sequence length" } },
      yaxis: { ...AXIS, title: { text: "peak (MiB)" }, rangemode: "tozero" },
      legend: { orientation: "h", y: -0.3 } }, CONFIG);
    return traces.length;
  }

  async function resize(root) {
    const Plotly = await ready();
    root.querySelectorAll(".js-plotly-plot").forEach((el) => Plotly.Plots.resize(el));
  }

  return { ready, scatter, paretoFront, pivot, saving, lossCurves, metricCurves, memoryBar, memoryParts, fidelity, errorAxis,
    resize, MEMORY, colorMap, benchCurves };
})();
