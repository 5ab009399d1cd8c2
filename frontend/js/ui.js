/* mefts dashboard: what every view shares: DOM helpers, flash messages, the URL hash, download links and the
   app state. No build step: this file defines one global, `UI`; the views are js/views/*.js, the router js/app.js. */
"use strict";

const UI = (() => {
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
    if (location.hash === hash) UI.route();
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

  return { $, el, state, flash, guard, debounce, parseHash, navigate, downloads, badge, STATUS_TEXT, route: null };
})();
