/* mefts dashboard: routing by URL hash between the views (js/views/*.js) and live updates from the event stream.
   Every action is an API call (see /docs); the views only read and post what the API serves. */
"use strict";

(() => {
  const { $, state, flash, guard, parseHash } = UI;

  // ---------------------------------------------------------------------------------------------- routing
  const VIEWS = ["compare", "runs", "submit", "fits", "paper", "run", "diff"];

  function showView(name) {
    for (const v of VIEWS) $(`view-${v}`).hidden = v !== name;
    document.querySelectorAll("nav a[data-view]").forEach((a) => {
      const on = a.dataset.view === name || ((name === "run" || name === "diff") && a.dataset.view === "runs");
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
    if (parts[0] === "diff") { showView("diff"); return Diff.show(params); }
    if (parts[0] === "submit") { showView("submit"); return Submit.show(params); }
    if (parts[0] === "fits") { showView("fits"); return Fits.show(params); }
    if (parts[0] === "paper") { showView("paper"); return Paper.show(params); }
    showView("compare");
    guard(FirstStart.check)();
    return Compare.show(params);
  }

  /** Show the view the URL hash names; errors become flash messages. */
  function route() { return guard(routeNow)(); }
  UI.route = route;

  // ================================================================================================ start
  function onRunEvent(ev) {
    Runs.onEvent(ev);
    Detail.onEvent(ev);
    if (["succeeded", "failed", "does_not_fit", "cancelled"].includes(ev.status)) Compare.refresh();
  }

  async function start() {
    // Start fetching Plotly at once when the first view draws charts; otherwise once the first view is up.
    const { parts, params } = parseHash();
    const charted = parts[0] !== "submit" && !(parts[0] === "runs" && !parts[1]);  // diff draws charts too
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
