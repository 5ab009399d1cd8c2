/* mefts dashboard: the REST client, the live event stream, formatting and table downloads.
   No build step: this file defines one global, `Api`. */
"use strict";

const Api = (() => {
  /** An HTTP error; `fieldErrors` holds FastAPI's 422 detail items ({loc, msg, input}). */
  class ApiError extends Error {
    constructor(status, detail, url) {
      const text = typeof detail === "string" ? detail
        : Array.isArray(detail) ? detail.map((d) => d.msg).join("; ") : JSON.stringify(detail);
      super(`${status}: ${text}`);
      this.status = status;
      this.detail = detail;
      this.url = url;
      this.fieldErrors = Array.isArray(detail) ? detail : [];
    }
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      if (v === undefined || v === null || v === "") continue;
      if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
      else q.append(k, v);
    }
    const s = q.toString();
    return s ? `?${s}` : "";
  }

  // The API token (MEFTS_API_TOKEN), when the server has one: typed into #api-token, kept in localStorage and sent
  // as a Bearer header. The field shows once a request is refused with 401 (or when a token is already stored).
  const TOKEN_KEY = "mefts.apiToken";
  const tokenField = () => document.getElementById("api-token");
  const showBox = () => { const box = document.getElementById("api-token-box"); if (box) box.hidden = false; };
  function token() {
    try { return localStorage.getItem(TOKEN_KEY) || ""; } catch (_) { return ""; }
  }
  function setToken(value) {
    try { if (value) localStorage.setItem(TOKEN_KEY, value); else localStorage.removeItem(TOKEN_KEY); } catch (_) { /* private mode */ }
  }
  function showTokenField(focus) {
    const el = tokenField();
    if (!el) return;
    showBox();
    if (focus && !el.value) el.focus();
  }
  document.addEventListener("DOMContentLoaded", () => {
    const el = tokenField();
    if (!el) return;
    el.value = token();
    if (el.value) showBox();
    el.addEventListener("change", () => setToken(el.value.trim()));
  });

  async function request(method, path, { params, body } = {}) {
    const url = path + query(params);
    const init = { method, headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const auth = token();
    if (auth) init.headers.Authorization = `Bearer ${auth}`;
    const res = await fetch(url, init);
    if (res.status === 401) showTokenField(true);
    const type = res.headers.get("content-type") || "";
    const data = type.includes("json") ? await res.json() : await res.text();
    if (!res.ok) throw new ApiError(res.status, data && data.detail !== undefined ? data.detail : data, url);
    return data;
  }

  const get = (path, params) => request("GET", path, { params });
  const post = (path, body) => request("POST", path, { body });

  /** Live run changes: EventSource on /api/events; if the stream cannot be opened, polls /api/runs?updated_since.
      `onRun(event)` gets {id, status, progress, ...}; `onState(state)` gets "live", "reconnecting" or "polling". */
  function subscribe(onRun, onState) {
    let source = null;
    let timer = null;
    let since = null;
    const poll = async () => {
      try {
        const page = await get("/api/runs", { updated_since: since, sort: "updated_at", order: "asc", limit: 200 });
        since = page.server_time;
        if (page.items.length) page.items.forEach(onRun);
      } catch (_) { /* the server is away: try again at the next tick */ }
      timer = setTimeout(poll, 2000);
    };
    const startPolling = async () => {
      onState("polling");
      try { since = (await get("/api/runs", { limit: 1 })).server_time; } catch (_) { since = null; }
      poll();
    };
    if (typeof EventSource === "undefined") { startPolling(); return () => clearTimeout(timer); }
    source = new EventSource("/api/events");
    source.addEventListener("open", () => onState("live"));
    source.addEventListener("run", (e) => onRun(JSON.parse(e.data)));
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) { source = null; startPolling(); }
      else onState("reconnecting");
    });
    return () => { if (source) source.close(); clearTimeout(timer); };
  }

  // ------------------------------------------------------------------------------------------------ formatting
  const MiB = 2 ** 20;
  const GiB = 2 ** 30;

  /** Bytes in GiB, or MiB below a quarter GiB (as the server's Markdown/LaTeX exports do), KiB below 0.1 MiB. */
  function fmtBytes(b, digits = 2) {
    if (b === null || b === undefined || Number.isNaN(b)) return "";
    if (b >= GiB / 4) return `${(b / GiB).toFixed(digits)} GiB`;
    if (b >= MiB / 10) return `${(b / MiB).toFixed(1)} MiB`;
    return `${(b / 1024).toFixed(1)} KiB`;
  }

  /** The unit an axis of byte values should use: {div, unit}. */
  function byteUnit(maxBytes) {
    return maxBytes >= GiB / 4 ? { div: GiB, unit: "GiB" } : { div: MiB, unit: "MiB" };
  }

  /** A score in [−1, 1] as a percentage with one decimal, other values with three decimals. */
  function fmtScore(v) {
    if (v === null || v === undefined) return "";
    return Math.abs(v) <= 1 ? (100 * v).toFixed(1) : v.toFixed(3);
  }

  function fmtPm(mean, std, f = fmtScore) {
    if (mean === null || mean === undefined) return "";
    return f(mean) + (std !== null && std !== undefined ? ` ± ${f(std)}` : "");
  }

  /** A saving (0.84 = 84% less) as "−84%". */
  function fmtSaving(s) {
    if (s === null || s === undefined || Number.isNaN(s)) return "";
    const pct = Math.round(-s * 100);
    return `${pct > 0 ? "+" : pct < 0 ? "−" : "±"}${Math.abs(pct)}%`;
  }

  function fmtDuration(sec) {
    if (sec === null || sec === undefined) return "";
    if (sec < 60) return `${sec.toFixed(0)} s`;
    if (sec < 3600) return `${Math.floor(sec / 60)} min ${Math.round(sec % 60)} s`;
    return `${Math.floor(sec / 3600)} h ${Math.round((sec % 3600) / 60)} min`;
  }

  function fmtTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : d.toLocaleString(undefined, {
      month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
  }

  // ------------------------------------------------------------------------------------------------ downloads
  const cell = (v) => (v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));

  function toCSV(columns, rows) {
    const esc = (s) => (/[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s);
    return [columns.map(esc).join(","), ...rows.map((r) => columns.map((c) => esc(cell(r[c]))).join(","))]
      .join("\n") + "\n";
  }

  function toJSON(columns, rows) {
    return JSON.stringify(rows.map((r) => Object.fromEntries(columns.map((c) => [c, r[c] ?? null]))), null, 1);
  }

  function toMarkdown(columns, rows) {
    const esc = (s) => s.replace(/\|/g, "\\|").replace(/\n/g, " ");
    return [`| ${columns.map(esc).join(" | ")} |`, `|${"---|".repeat(columns.length)}`,
      ...rows.map((r) => `| ${columns.map((c) => esc(cell(r[c]))).join(" | ")} |`)].join("\n") + "\n";
  }

  const TEX = { "\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", $: "\\$", "#": "\\#", _: "\\_", "{": "\\{",
    "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}", "±": "$\\pm$", "−": "$-$", "★": "$\\star$" };
  const texEscape = (s) => Array.from(s).map((ch) => TEX[ch] ?? ch).join("");

  function toLatex(columns, rows) {
    return [`\\begin{tabular}{${"l".repeat(columns.length)}}`, "\\toprule",
      `${columns.map(texEscape).join(" & ")} \\\\`, "\\midrule",
      ...rows.map((r) => `${columns.map((c) => texEscape(cell(r[c]))).join(" & ")} \\\\`),
      "\\bottomrule", "\\end{tabular}"].join("\n") + "\n";
  }

  const FORMATS = {
    csv: [toCSV, "text/csv"], json: [toJSON, "application/json"], md: [toMarkdown, "text/markdown"],
    tex: [toLatex, "application/x-tex"],
  };

  /** Save a table built in the browser as `stem.fmt`. */
  function saveTable(columns, rows, fmt, stem) {
    const [render, type] = FORMATS[fmt];
    const blob = new Blob([render(columns, rows)], { type: `${type};charset=utf-8` });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `${stem}.${fmt}`;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  return {
    ApiError, get, post, query, subscribe, fmtBytes, byteUnit, fmtScore, fmtPm, fmtSaving, fmtDuration,
    fmtTime, saveTable, FORMATS, MiB, GiB,
  };
})();
