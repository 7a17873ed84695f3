// Index page: every slide of DIR in a sortable, filterable table; failed slides with their error.
import { el, fmt, getJSON, showError, slideHref } from "./common.js";

const state = { rows: [], columns: [], sortBy: "slide_id", ascending: true };

function columns(data) {
  const cols = [
    { key: "slide_id", title: "slide", value: (s) => s.slide_id },
    { key: "status", title: "status", value: (s) => s.status },
    { key: "predicted", title: "predicted", value: (s) => s.predicted },
  ];
  if (data.kind === "evaluate") cols.push({ key: "label", title: "label", value: (s) => s.label });
  const calibrated = data.calibrated ? " (calibrated)" : "";
  for (const c of data.classes) {
    cols.push({ key: `p_${c}`, title: `p(${c})${calibrated}`, numeric: true,
                value: (s) => s.probabilities[c] ?? null });
  }
  const questions = [...new Set(data.slides.flatMap((s) => s.attributes.map((a) => a.question)))];
  for (const q of questions) {
    cols.push({ key: `q_${q}`, title: q, value: (s) => {
      const a = s.attributes.find((x) => x.question === q);
      return a ? `${a.answer}${a.probability === null ? "" : ` (${fmt(a.probability, 2)})`}` : "";
    } });
  }
  cols.push({ key: "n_patches", title: "patches", numeric: true, digits: 0, value: (s) => s.n_patches });
  cols.push({ key: "error", title: "error", value: (s) => [s.error, s.render_error].filter(Boolean).join("; ") });
  return cols;
}

function render() {
  const table = document.getElementById("slides");
  const query = document.getElementById("filter").value.trim().toLowerCase();
  const status = document.getElementById("status").value;
  const head = el("tr");
  for (const col of state.columns) {
    const mark = col.key === state.sortBy ? (state.ascending ? " ▲" : " ▼") : "";
    const th = el("th", { "data-key": col.key, tabindex: 0, text: col.title + mark });
    th.addEventListener("click", () => sortBy(col.key));
    th.addEventListener("keydown", (e) => { if (e.key === "Enter") sortBy(col.key); });
    head.append(th);
  }
  table.tHead.replaceChildren(head);
  const col = state.columns.find((c) => c.key === state.sortBy) || state.columns[0];
  const rows = state.rows
    .filter((s) => !status || s.status === status)
    .filter((s) => !query || state.columns.some((c) => String(c.value(s) ?? "").toLowerCase().includes(query)))
    .sort((a, b) => compare(col.value(a), col.value(b), col.numeric) * (state.ascending ? 1 : -1));
  const body = rows.map((s) => {
    const tr = el("tr", { class: s.status === "ok" ? "" : "failed", "data-slide": s.slide_id });
    for (const c of state.columns) {
      const value = c.value(s);
      if (c.key === "slide_id") tr.append(el("td", {}, el("a", { href: slideHref(s.key), text: value })));
      else tr.append(el("td", { class: c.numeric ? "num" : "", text: c.numeric ? fmt(value, c.digits ?? 3) : value ?? "" }));
    }
    return tr;
  });
  table.tBodies[0].replaceChildren(...body);
  document.getElementById("count").textContent = `${rows.length} of ${state.rows.length} slides`;
}

function compare(a, b, numeric) {
  const missing = (v) => v === null || v === undefined || v === "";
  if (missing(a) || missing(b)) return missing(a) - missing(b);
  return numeric ? a - b : String(a).localeCompare(String(b), undefined, { numeric: true });
}

function sortBy(key) {
  state.ascending = state.sortBy === key ? !state.ascending : true;
  state.sortBy = key;
  render();
}

async function main() {
  const data = await getJSON("/api/slides");
  state.rows = data.slides;
  state.columns = columns(data);
  const failed = data.slides.filter((s) => s.status !== "ok").length;
  document.getElementById("summary").textContent =
    `${data.kind} output · ${data.slides.length} slides · ${failed} failed · classes ${data.classes.join(", ")}` +
    (data.calibration ? ` · probabilities ${data.calibration}` : "");
  const nav = document.getElementById("files");
  for (const [name, href] of Object.entries(data.files)) nav.append(el("a", { href, text: name }));
  const figures = document.getElementById("figures");
  if (data.figures.length) figures.append(el("h2", { text: "Evaluation" }));
  for (const { title, href } of data.figures) {
    figures.append(el("figure", {}, el("a", { href }, el("img", { src: href, alt: title })),
                      el("figcaption", { text: title })));
  }
  document.getElementById("filter").addEventListener("input", render);
  document.getElementById("status").addEventListener("change", render);
  render();
}

main().catch(showError);
