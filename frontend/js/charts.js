/* mefts dashboard: figures (Plotly.js, served from the installed plotly package) and the shaping of results data
   for them: the memory–accuracy scatter with its Pareto front, the method × backbone pivot, the run curves, the
   memory breakdown and the per-layer gradient fidelity. Defines one global, `Charts`. */
"use strict";

const Charts = (() => {
  /** Plotly.js, loaded on first use from /static/plotly.min.js (the 1.2 MB basic bundle in frontend/vendor/):
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

  /** What the compare scatter can put on an axis or in its colour, by key: the results column (mean over seeds), its
      std column where there is one, the unit, and which way is better. */
  const METRICS = {
    score: { label: "Score", mean: "score_mean", std: "score_std", unit: "score", better: "higher" },
    peak: { label: "Peak memory", mean: "peak_bytes_mean", std: "peak_bytes_std", unit: "bytes", better: "lower" },
    peak_act: { label: "Peak activation", mean: "peak_activation_bytes_mean", std: null, unit: "bytes", better: "lower" },
    stored: { label: "Stored activations", mean: "stored_activation_bytes_mean", std: "stored_activation_bytes_std",
      unit: "bytes", better: "lower" },
    step: { label: "Step time", mean: "step_seconds_mean", std: null, unit: "s", better: "lower" },
    tps: { label: "Tokens/s", mean: "tokens_per_second_mean", std: null, unit: "tokens/s", better: "higher" },
    params: { label: "Trainable params", mean: "trainable_params", std: null, unit: "params", better: "lower" },
    wall: { label: "Wall time", mean: "wall_seconds_mean", std: null, unit: "s", better: "lower" },
  };

  /** Indices of the points on the Pareto front for the axes' better directions (`lowerX`, `higherY`): no other point
      is at least as good on both axes and better on one. Returned in order from the best x to the worst. */
  function paretoFront(points, { lowerX = true, higherY = true } = {}) {
    const cost = (p) => [lowerX ? p.x : -p.x, higherY ? p.y : -p.y];  // minimise the first, maximise the second
    const order = points.map((p, i) => i).sort((a, b) => cost(points[a])[0] - cost(points[b])[0] ||
      cost(points[b])[1] - cost(points[a])[1]);
    const front = [];
    let best = -Infinity;
    for (const i of order) {
      const gain = cost(points[i])[1];
      if (gain > best) { front.push(i); best = gain; }
    }
    return front;
  }

  const runList = (row) => { try { return JSON.parse(row.run_ids || "[]"); } catch (_) { return []; } };

  /** How an axis shows a metric: the divisor (bytes in MiB/GiB, scores in %) and the unit in its title. */
  function axisScale(key, rows) {
    const m = METRICS[key];
    if (m.unit === "bytes") return Api.byteUnit(Math.max(0, ...rows.map((r) => r[m.mean])));
    if (m.unit === "score") {
      const pct = rows.every((r) => Math.abs(r[m.mean]) <= 1);
      return { div: pct ? 0.01 : 1, unit: pct ? "%" : "" };
    }
    return { div: 1, unit: m.unit };
  }

  /** One metric of a results row as text, for hover labels. */
  function fmtMetric(key, r) {
    const m = METRICS[key];
    const v = r[m.mean];
    if (v === null || v === undefined) return "—";
    if (m.unit === "bytes") return Api.fmtPm(v, m.std ? r[m.std] : null, (x) => Api.fmtBytes(x));
    if (m.unit === "score") return Api.fmtPm(v, r[m.std]);
    if (m.unit === "s") return key === "wall" ? Api.fmtDuration(v) : `${(1000 * v).toPrecision(3)} ms`;
    return Math.round(v).toLocaleString("en-US");
  }

  /** A results row's whole configuration for the hover label: every metric, then every config field. */
  function hoverText(r, onFront) {
    let cfg = {};
    try { cfg = JSON.parse(r.config || "{}"); } catch (_) { /* an old row without config: metrics only */ }
    const ids = runList(r);
    return [
      `<b>${r.method}</b> · ${r.backbone} · ${r.task} (n=${r.n}, seeds ${r.seeds})`,
      ...Object.keys(METRICS).map((k) => `${k === "score" ? r.main_metric || "score" : METRICS[k].label.toLowerCase()}: ${fmtMetric(k, r)}`),
      ...Object.entries(cfg).filter(([, v]) => v !== null && !(typeof v === "object" && !Object.keys(v).length))
        .map(([k, v]) => `<span style="color:#52606d">${k}</span> ${typeof v === "object" ? JSON.stringify(v) : v}`),
      `run${ids.length > 1 ? "s" : ""} ${ids.map((id) => `#${id}`).join(", ")}`,
      onFront ? "<i>on the Pareto front</i>" : "",
    ].filter(Boolean).join("<br>");
  }

  /** Scatter of one metric against another, one point per results row (mean over seeds, error bars = std).
      Colour = method label, or a colour scale of a third metric; symbol = backbone; dashed step line = Pareto front
      of the chosen pair, one per backbone (or one over all with `frontAll`). Resolves with {shown, hidden, fronts}:
      `fronts` lists each front's backbone (null: all) and its rows' run ids, as drawn. */
  async function scatter(div, rows, { x = "peak_act", y = "score", color = "", frontAll = false, log = false, onPoint } = {}) {
    const Plotly = await ready();
    const mx = METRICS[x];
    const my = METRICS[y];
    const mc = color ? METRICS[color] : null;
    const ok = (v) => v !== null && v !== undefined && Number.isFinite(v);
    const usable = rows.filter((r) => ok(r[mx.mean]) && ok(r[my.mean]) && (!log || r[mx.mean] > 0));
    const hidden = rows.length - usable.length;
    const sx = axisScale(x, usable);
    const sy = axisScale(y, usable);
    const labels = [...new Set(usable.map((r) => r.method))].sort();
    const backbones = [...new Set(usable.map((r) => r.backbone))].sort();
    const colors = colorMap(labels);
    const symbol = Object.fromEntries(backbones.map((b, i) => [b, SYMBOLS[i % SYMBOLS.length]]));
    const pts = usable.map((r) => ({ x: r[mx.mean] / sx.div, y: r[my.mean] / sy.div, row: r }));
    const dirs = { lowerX: mx.better === "lower", higherY: my.better === "higher" };
    const groups = frontAll ? [null] : backbones;
    const fronts = groups.map((b) => {
      const idx = pts.map((p, i) => i).filter((i) => b === null || pts[i].row.backbone === b);
      return { backbone: b, idx: paretoFront(idx.map((i) => pts[i]), dirs).map((k) => idx[k]) };
    });
    const onFront = new Set(fronts.flatMap((f) => f.idx));
    const cvals = mc ? pts.map((p) => p.row[mc.mean]) : [];
    const cfinite = cvals.filter(ok);
    // Plotly would label bytes "10B" (SI giga): label five even steps of the colour bar as MiB/GiB instead
    const cticks = mc && mc.unit === "bytes" && cfinite.length
      ? [0, 1, 2, 3, 4].map((k) => Math.min(...cfinite) + (k / 4) * (Math.max(...cfinite) - Math.min(...cfinite))) : null;

    const traces = [];
    for (const label of labels) {
      const idx = pts.map((p, i) => i).filter((i) => pts[i].row.method === label);
      const bar = (m, s) => ({ type: "data", visible: true, thickness: 1, width: 3, color: mc ? "#9aa5b1" : colors[label],
        array: idx.map((i) => (m.std ? (pts[i].row[m.std] ?? 0) / s.div : 0)) });
      traces.push({
        type: "scatter", mode: "markers", name: label, legendgroup: label, showlegend: false,
        x: idx.map((i) => pts[i].x), y: idx.map((i) => pts[i].y), error_x: bar(mx, sx), error_y: bar(my, sy),
        marker: {
          color: mc ? idx.map((i) => (ok(cvals[i]) ? cvals[i] : null)) : colors[label], size: 11,
          symbol: idx.map((i) => symbol[pts[i].row.backbone]),
          line: { color: idx.map((i) => (onFront.has(i) ? "#111" : "#fff")), width: idx.map((i) => (onFront.has(i) ? 1.5 : 1)) },
          ...(mc ? { colorscale: "Viridis", reversescale: mc.better === "lower", cmin: Math.min(...cfinite),
            cmax: Math.max(...cfinite), showscale: label === labels[0],
            colorbar: { title: { text: `${mc.label} (${mc.better} is better)` }, len: 0.6, y: 0.3, x: 1.02,
              ...(cticks ? { tickvals: cticks, ticktext: cticks.map((v) => Api.fmtBytes(v, 1)) } : {}) } } : {}),
        },
        text: idx.map((i) => hoverText(pts[i].row, onFront.has(i))), hovertemplate: "%{text}<extra></extra>",
        customdata: idx.map((i) => [runList(pts[i].row).join(","), pts[i].row.backbone, pts[i].row.n]),
        meta: { kind: "results" },
      });
    }
    for (const f of fronts.filter((g) => g.idx.length)) {
      traces.push({
        type: "scatter", mode: "lines", name: f.backbone ? `Pareto front · ${f.backbone}` : "Pareto front",
        showlegend: false, line: { shape: "hv", dash: "dash", color: "#52606d", width: 1.5 },
        x: f.idx.map((i) => pts[i].x), y: f.idx.map((i) => pts[i].y), hoverinfo: "skip",
        meta: { kind: "pareto", backbone: f.backbone }, customdata: f.idx.map((i) => runList(pts[i].row).join(",")),
      });
    }
    // Legend-only entries: a colour square per method, a grey symbol per backbone.
    if (!mc) {
      labels.forEach((label) => traces.push({ type: "scatter", mode: "markers", x: [null], y: [null], name: label,
        legendgroup: label, legendgrouptitle: label === labels[0] ? { text: "Method" } : undefined,
        marker: { color: colors[label], symbol: "square", size: 10 }, hoverinfo: "skip", meta: { kind: "legend" } }));
    }
    backbones.forEach((b, i) => traces.push({ type: "scatter", mode: "markers", x: [null], y: [null], name: b,
      legendgroup: `backbone:${b}`, legendgrouptitle: i === 0 ? { text: "Backbone" } : undefined,
      marker: { color: "#7b8794", symbol: symbol[b], size: 10 }, hoverinfo: "skip", meta: { kind: "legend" } }));

    const title = (m, s, key, isLog) => `${key === "score" && usable.length ? usable[0].main_metric : m.label}` +
      `${s.unit || isLog ? ` (${[s.unit, isLog ? "log scale" : ""].filter(Boolean).join(", ")})` : ""} → ${m.better} is better`;
    const narrow = div.clientWidth < 640;
    const layout = {
      ...BASE_LAYOUT,
      xaxis: { ...AXIS, title: { text: title(mx, sx, x, log) }, type: log ? "log" : "linear" },
      yaxis: { ...AXIS, title: { text: title(my, sy, y, false) } },
      legend: narrow ? { orientation: "h", y: -0.3, x: 0 } : { x: mc ? 1.2 : 1.02, y: 1, groupclick: "toggleitem" },
      margin: { ...BASE_LAYOUT.margin, r: narrow ? 16 : mc ? 230 : 150 },
      hovermode: "closest",
    };
    if (narrow && mc) traces.forEach((t) => { if (t.marker && t.marker.showscale) t.marker.showscale = false; });
    await Plotly.react(div, traces, layout, CONFIG);
    if (onPoint && !div.__meftsClick) {
      div.__meftsClick = true;
      div.on("plotly_click", (ev) => {
        const p = ev.points && ev.points[0];
        if (p && p.customdata && p.data.meta && p.data.meta.kind === "results") {
          onPoint(String(p.customdata[0]).split(",").filter(Boolean).map(Number), ev.event);
        }
      });
    }
    return { shown: usable.length, hidden,
      fronts: fronts.map((f) => ({ backbone: f.backbone, runs: f.idx.map((i) => runList(pts[i].row)) })) };
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
          r.step_seconds_mean ? `${fmtMetric("step", r)}/step ${fmtMetric("tps", r)} tok/s` : "",
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

  /** Curves of several runs in one chart (Compare runs): `kind` "loss" draws each run's epoch-mean train loss (or
      its per-step loss) solid and its dev loss dashed; "metric" its dev/test metrics per epoch. One colour per run. */
  async function overlayCurves(div, names, seriesList, kind) {
    const Plotly = await ready();
    const traces = [];
    seriesList.forEach((series, i) => {
      const color = EXTRA_COLORS.concat(Object.values(METHOD_COLORS))[i % 15];
      const add = (key, dash, xKey) => {
        const s = series[key];
        if (s && s.length) traces.push({ type: "scatter", mode: "lines+markers", name: `${names[i]}: ${key}`,
          x: s.map((p) => p[xKey]), y: s.map((p) => p.value), line: { color, dash }, meta: { run: i, key } });
      };
      if (kind === "loss") {
        add(series.train_loss && series.train_loss.length ? "train_loss" : "step_loss", "solid", "step");
        add("dev_loss", "dash", "step");
      } else {
        Object.keys(series).filter((k) => (k.startsWith("dev_") || k.startsWith("test_")) && !k.endsWith("_loss"))
          .forEach((k, j) => add(k, j ? "dot" : "solid", "epoch"));
      }
    });
    await Plotly.react(div, traces, { ...BASE_LAYOUT, title: { text: kind === "loss" ? "Loss" : "Metrics per epoch", font: { size: 13 } },
      xaxis: { ...AXIS, title: { text: kind === "loss" ? "step" : "epoch" } }, yaxis: { ...AXIS, title: { text: kind } },
      legend: { orientation: "h", y: -0.4 } }, CONFIG);  // below the axis title, also when the legend wraps
    return traces.length;
  }

  /** The memory breakdown of several runs side by side (Compare runs): one stacked bar per run, same parts and
      colours as a run's own breakdown, the measured peak as a black mark. */
  async function memoryBars(div, names, memories) {
    const Plotly = await ready();
    const parts = memories.map((m) => (m ? memoryParts(m) : []));
    const top = Math.max(0, ...memories.map((m, i) => Math.max(m ? m.peak_bytes || 0 : 0,
      parts[i].reduce((s, [, v]) => s + (v || 0), 0))));
    const { div: scale, unit } = Api.byteUnit(top);
    const labels = memoryParts({}).map(([label, , color]) => [label, color]);
    const traces = labels.map(([label, color], k) => ({
      type: "bar", orientation: "h", name: label, marker: { color }, y: names,
      x: parts.map((p) => (p[k] && p[k][1] !== null ? p[k][1] / scale : null)),
      hovertemplate: `%{y}<br>${label}: %{x:.3f} ${unit}<extra></extra>`,
    }));
    traces.push({ type: "scatter", mode: "markers", name: "measured peak", y: names,
      x: memories.map((m) => (m && m.peak_bytes ? m.peak_bytes / scale : null)),
      marker: { symbol: "line-ns-open", size: 22, color: "#111", line: { width: 2 } },
      hovertemplate: `%{y}<br>measured peak %{x:.3f} ${unit}<extra></extra>` });
    await Plotly.react(div, traces, { ...BASE_LAYOUT, barmode: "stack", height: 120 + 40 * names.length,
      xaxis: { ...AXIS, ticksuffix: ` ${unit}` }, yaxis: { ...AXIS, autorange: "reversed" },
      legend: { orientation: "h", y: -0.25 } }, CONFIG);
  }

  async function resize(root) {
    const Plotly = await ready();
    root.querySelectorAll(".js-plotly-plot").forEach((el) => Plotly.Plots.resize(el));
  }

  return { ready, CONFIG, BASE_LAYOUT, AXIS, scatter, paretoFront, pivot, saving, lossCurves, metricCurves, memoryBar, memoryParts, fidelity, errorAxis,
    resize, MEMORY, METRICS, fmtMetric, overlayCurves, memoryBars, colorMap, benchCurves };
})();
