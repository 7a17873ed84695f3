// Slide page: the slide in OpenSeadragon with its score layers (class heatmap, one per question
// prompt), tissue outline and patch grid; a click on a patch shows its scores.
import { el, fmt, getJSON, showError } from "./common.js";

const key = decodeURIComponent(location.pathname.split("/").pop());
const base = `/api/slides/${encodeURIComponent(key)}`;
const layers = new Map(); // layer id → { spec, item, checkbox, slider }
let viewer = null;
let patches = null;
let marker = null;

function predictionPanel(info) {
  const box = document.getElementById("prediction");
  const rows = [el("p", {}, "status: ", el("strong", { text: info.status }))];
  if (info.error) rows.push(el("p", { class: "error", text: info.error }));
  if (info.render_error) rows.push(el("p", { class: "error", text: `pictures: ${info.render_error}` }));
  if (info.predicted) rows.push(el("p", {}, "predicted: ", el("strong", { text: info.predicted })));
  if (info.label) rows.push(el("p", { text: `label: ${info.label}` }));
  const probs = Object.entries(info.probabilities);
  if (probs.length) {
    const table = el("table", { class: "compact" },
      el("tr", {}, el("th", { text: "class" }), el("th", { text: "probability" })));
    for (const [name, p] of probs) table.append(el("tr", {}, el("td", { text: name }), el("td", { class: "num", text: fmt(p) })));
    rows.push(table);
    rows.push(el("p", { class: "muted", text: info.calibration ? `probabilities: ${info.calibration}` : "probabilities: not calibrated" }));
  }
  box.replaceChildren(...rows);
  const attrs = document.getElementById("attributes");
  if (info.attributes.length) {
    const table = el("table", { class: "compact" },
      el("tr", {}, el("th", { text: "question" }), el("th", { text: "answer" }), el("th", { text: "p" })));
    for (const a of info.attributes) {
      table.append(el("tr", {}, el("td", { text: a.question }), el("td", { text: a.answer }), el("td", { class: "num", text: fmt(a.probability, 2) })));
    }
    attrs.replaceChildren(table);
  } else attrs.replaceChildren(el("p", { class: "muted", text: "no attributes (not a text model, or failed)" }));
  document.getElementById("description").textContent = info.description || "";
  const links = document.getElementById("links");
  const items = [];
  if (info.links.geojson) items.push(el("li", {}, el("a", { href: info.links.geojson, download: `${info.key}.geojson`, text: "GeoJSON of patch scores (QuPath)" })));
  if (info.links.report) items.push(el("li", {}, el("a", { href: info.links.report, text: "static report (report.html)" })));
  for (const [name, href] of Object.entries(info.links.heatmaps)) items.push(el("li", {}, el("a", { href, text: `heatmap ${name}` })));
  links.replaceChildren(...items);
}

function legend(info) {
  const stops = info.colormap.join(", ");
  document.querySelector("#legend .bar").style.background = `linear-gradient(to right, ${stops})`;
  updateRanges();
}

function updateRanges() {
  const list = document.getElementById("ranges");
  const shown = [...layers.values()].filter((l) => l.spec.min !== undefined && l.checkbox.checked);
  list.replaceChildren(...shown.map((l) => el("li", { class: l.spec.near_uniform ? "uniform" : "" },
    el("strong", { text: l.spec.name }), `: ${fmt(l.spec.min, 4)} – ${fmt(l.spec.max, 4)}`,
    l.spec.label ? ` · ${l.spec.label}` : "")));
}

function layerRow(spec, checked, opacity) {
  const id = `layer-${spec.id}`;
  const checkbox = el("input", { type: "checkbox", id, "data-layer": spec.name });
  checkbox.checked = checked;
  const slider = el("input", { type: "range", min: 0, max: 1, step: 0.05, value: opacity,
                               "aria-label": `opacity of ${spec.name}` });
  const row = el("div", { class: "layer" }, checkbox, el("label", { for: id, text: spec.name }), slider);
  if (spec.near_uniform) row.append(el("span", { class: "badge", title: spec.label, text: "near-uniform" }));
  const entry = { spec, item: null, checkbox, slider, loading: false };
  layers.set(spec.id, entry);
  checkbox.addEventListener("change", () => { apply(entry); updateRanges(); });
  slider.addEventListener("input", () => { if (entry.item) entry.item.setOpacity(Number(slider.value)); });
  return row;
}

function apply(entry) {
  const on = entry.checkbox.checked;
  if (entry.item) { entry.item.setOpacity(on ? Number(entry.slider.value) : 0); return; }
  if (!on || entry.loading) return;
  entry.loading = true;
  viewer.addTiledImage({
    tileSource: entry.spec.dzi,
    opacity: Number(entry.slider.value),
    success: (event) => {
      entry.item = event.item;
      entry.loading = false;
      entry.item.setOpacity(entry.checkbox.checked ? Number(entry.slider.value) : 0);
    },
    error: () => { entry.loading = false; showError(`layer ${entry.spec.name} did not load`); },
  });
}

function findPatch(x, y) {
  if (!patches || !patches.size) return -1;
  const s = patches.size;
  for (let i = 0; i < patches.coords.length; i++) {
    const [px, py] = patches.coords[i];
    if (x >= px && x < px + s && y >= py && y < py + s) return i;
  }
  return -1;
}

function showPatch(index, info) {
  const box = document.getElementById("patch");
  if (index < 0) { box.replaceChildren(el("p", { class: "muted", text: "no patch here" })); return; }
  const [x, y] = patches.coords[index];
  const n = patches.coords.length;
  const rows = [el("p", { id: "patch-coords", text: `patch ${index + 1} of ${n} · level-0 x ${x}, y ${y}, ${patches.size} px` +
    (info.mpp ? ` (${fmt(x * info.mpp / 1000, 2)}, ${fmt(y * info.mpp / 1000, 2)} mm)` : "") })];
  const table = el("table", { class: "compact", id: "patch-scores" },
    el("tr", {}, el("th", { text: "layer" }), el("th", { text: "score" }), el("th", { text: "× uniform" })));
  patches.layers.forEach((name, j) => {
    const v = patches.scores[index][j];
    const what = name.startsWith("class ") ? `${name} (class contribution)` : `${name} (question attention)`;
    table.append(el("tr", {}, el("td", { text: what }), el("td", { class: "num", text: v === null ? "—" : fmt(v, 6) }),
                    el("td", { class: "num", text: v === null ? "" : fmt(v * n, 2) })));
  });
  rows.push(table);
  box.replaceChildren(...rows);
  if (marker) viewer.removeOverlay(marker);
  marker = el("div", { class: "marker" });
  const item = viewer.world.getItemAt(0);
  viewer.addOverlay({ element: marker, location: item.imageToViewportRectangle(x, y, patches.size, patches.size) });
}

async function main() {
  const info = await getJSON(base);
  document.title = `fivewsi view — ${info.slide_id}`;
  document.getElementById("title").textContent = info.slide_id;
  document.getElementById("mode").textContent = info.image ? "slide image" :
    info.dzi ? "patch canvas (the slide image is not at hand)" : "no image and no patches";
  predictionPanel(info);
  legend(info);
  if (!info.dzi) { document.getElementById("viewer").append(el("p", { class: "muted", text: "nothing to show" })); return; }
  patches = await getJSON(`${base}/patches`);
  viewer = OpenSeadragon({
    element: document.getElementById("viewer"),
    prefixUrl: "/static/vendor/openseadragon/images/",
    tileSources: info.dzi,
    drawer: "canvas",
    showNavigator: true,
    maxZoomPixelRatio: 4,
    gestureSettingsMouse: { clickToZoom: false },
  });
  window.fivewsi = {
    viewer,
    idle: () => viewer.world.getItemCount() > 0 && [...Array(viewer.world.getItemCount()).keys()]
      .every((i) => viewer.world.getItemAt(i).getFullyLoaded()) && [...layers.values()].every((l) => !l.loading),
  };
  const box = document.getElementById("layers");
  const specs = [...info.layers];
  const first = specs.findIndex((l) => l.kind === "class");
  specs.forEach((spec, i) => box.append(layerRow(spec, i === first, 0.5)));
  for (const [name, dzi] of Object.entries(info.overlays)) {
    box.append(layerRow({ id: name, name: name === "grid" ? "patch grid" : info.image ? "tissue outline" : "outline of the patches", dzi }, false, 1));
  }
  viewer.addHandler("open", () => { for (const entry of layers.values()) apply(entry); });
  viewer.addHandler("canvas-click", (event) => {
    if (!event.quick) return;
    const item = viewer.world.getItemAt(0);
    const point = item.viewportToImageCoordinates(viewer.viewport.pointFromPixel(event.position));
    showPatch(findPatch(point.x, point.y), info);
  });
}

main().catch(showError);
