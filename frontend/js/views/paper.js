/* mefts dashboard, view — Paper table: methods × a suite's tasks as the paper prints them (GET /api/results/paper.json,
   the same table as `mefts reproduce` and the md/tex/csv exports). One global, named as the view. */
"use strict";

const Paper = (() => {
  const { $, el, downloads } = UI;
  const SUITES = { glue: "GLUE", qa: "QA" };

  async function show(params) {
    const suite = SUITES[params.get("suite")] ? params.get("suite") : "glue";
    const data = await Api.get("/api/results/paper.json", { suite });
    const tabs = el("p", { class: "controls" }, "Suite: ", ...Object.entries(SUITES).map(([key, label]) =>
      el("a", { href: `#/paper?suite=${key}`, class: "dl", "aria-current": key === suite ? "page" : null }, label)));
    const head = el("tr", {}, ...data.columns.map((c) => el("th", { scope: "col" }, c)));
    const body = data.cells.map((cells) => el("tr", {}, el("th", { scope: "row" }, cells[0]),
      ...cells.slice(1).map((c) => el("td", { class: c === "no data" ? "na" : null }, c))));
    const table = data.cells.length
      ? el("table", { id: "paper-table", class: "data" }, el("thead", {}, head), el("tbody", {}, body))
      : el("div", { class: "empty-state" }, el("p", {}, el("strong", {}, "No results yet. "),
        "Rows appear when runs on this suite's tasks succeed (mefts reproduce, or sweeps from the Submit view)."));
    const notes = el("ul", { id: "paper-notes", class: "note" }, ...data.notes.map((n) => el("li", {}, n)));
    const dl = el("p", { id: "paper-downloads" });
    const api = Object.fromEntries(["csv", "json", "md", "tex"].map((f) => [f, `/api/results/paper.${f}?suite=${suite}`]));
    downloads(dl, { api, stem: `paper-${suite}` });
    $("paper-body").replaceChildren(tabs, table, notes, dl);
    $("paper-body").dataset.rendered = String(data.cells.length);
  }

  return { show };
})();
