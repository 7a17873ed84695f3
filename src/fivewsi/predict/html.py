"""One self-contained, offline HTML page for a prediction run (``OUT/report.html``).

The page needs no network and no JavaScript: CSS is inline and every image is embedded as a
base64 ``data:`` URI. To keep the page a reasonable size, embedded images are shrunk so their
longer side is at most :data:`THUMBNAIL_MAX_SIDE` (slide thumbnails) or
:data:`HEATMAP_MAX_SIDE` (heatmaps) and stored as JPEG (quality :data:`JPEG_QUALITY`): about
10–20 kB per heatmap, so a slide with 25 heatmaps adds roughly half a megabyte. Full-size
files can be linked with a relative ``href`` (links to other sites are refused).

Every piece of text — slide ids, class names, questions, answers, errors, user-supplied
reports — is HTML-escaped, so a report containing ``<script>`` is shown, never run.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import cv2
import numpy as np

from fivewsi.predict.heatmaps import colormap_stops
from fivewsi.utils.atomic import write_text_atomic

log = logging.getLogger(__name__)

#: Longer side, in pixels, of slide thumbnails embedded in the page.
THUMBNAIL_MAX_SIDE = 384
#: Longer side, in pixels, of heatmaps embedded in the page.
HEATMAP_MAX_SIDE = 256
#: Longer side, in pixels, up to which evaluation figures are embedded unchanged (PNG).
FIGURE_MAX_SIDE = 1200
#: The list of figures in an evaluation's ``metrics.json``.
FIGURES_KEY = "figures"
#: JPEG quality of embedded images.
JPEG_QUALITY = 85
#: Background of the summary table's header; the headless-browser test looks for this colour.
SUMMARY_HEADER_RGB = (94, 43, 151)
STATUSES = ("ok", "failed")
_NORMALIZE_NOTES = {
    "rank": "each patch's score, ranked within its slide",
    "minmax": "each patch's score, from the slide's lowest to its highest",
    "none": "each patch's score, from 0 to 1",
}

ImageSource = bytes | str | os.PathLike[str] | np.ndarray


@dataclass
class SlideImage:
    """An image shown for a slide: PNG/JPEG bytes, a file path, or an RGB ``uint8`` array.

    ``href`` optionally links the embedded (shrunk) image to a full-size file, as a path
    relative to the report.

    Example:
        >>> SlideImage("vascular invasion", "heatmaps/s1/q3.png", href="heatmaps/s1/q3.png").title
        'vascular invasion'
    """

    title: str
    image: ImageSource
    href: str | None = None


@dataclass
class AttributeRow:
    """One question's best-matching answer for a slide, and its score.

    Example:
        >>> AttributeRow("Vascular invasion?", "vascular invasion present", 0.71).score
        0.71
    """

    question: str
    answer: str
    score: float | None = None


@dataclass
class SlideReport:
    """Everything the page shows for one slide.

    Example:
        >>> SlideReport("s1", predicted="LUAD", probabilities={"LUAD": 0.8, "LUSC": 0.2}).confidence
        0.8
        >>> SlideReport("s2", status="failed", error="unreadable slide").status
        'failed'
    """

    slide_id: str
    status: str = "ok"
    error: str | None = None
    render_error: str | None = None  # heatmaps not drawn; the prediction itself stands
    predicted: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    attributes: list[AttributeRow] = field(default_factory=list)
    description: str | None = None  # draft description built from the attributes
    report: str | None = None  # user-supplied pathology report text, shown verbatim
    thumbnail: SlideImage | None = None
    heatmaps: list[SlideImage] = field(default_factory=list)
    geojson: str | None = None  # path of the slide's GeoJSON, relative to the report
    details: dict[str, Any] = field(default_factory=dict)  # e.g. patches, seconds

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        self.attributes = [
            row if isinstance(row, AttributeRow) else AttributeRow(*row)
            for row in self.attributes
        ]

    @property
    def confidence(self) -> float | None:
        """Probability of the predicted class (None without a prediction)."""
        if self.predicted is None or self.predicted not in self.probabilities:
            return None
        return float(self.probabilities[self.predicted])


def write_report_html(
    path: str | os.PathLike[str],
    slides: Sequence[SlideReport],
    *,
    title: str = "fivewsi predictions",
    summary: Mapping[str, Any] | None = None,
    run_info: Mapping[str, Any] | None = None,
    colormap: str = "turbo",
    heatmap_normalize: str = "rank",
    thumbnail_max_side: int = THUMBNAIL_MAX_SIDE,
    heatmap_max_side: int = HEATMAP_MAX_SIDE,
    figures: Sequence[SlideImage] = (),
) -> Path:
    """Write the report page atomically; return its path. Arguments as :func:`render_report_html`.

    Example:
        >>> write_report_html("out/report.html", [SlideReport("s1", predicted="LUAD")],
        ...                   summary={"classes": "LUAD, LUSC"})  # doctest: +SKIP
        PosixPath('out/report.html')
    """
    path = Path(path)
    page = render_report_html(
        slides,
        title=title,
        summary=summary,
        run_info=run_info,
        colormap=colormap,
        heatmap_normalize=heatmap_normalize,
        thumbnail_max_side=thumbnail_max_side,
        heatmap_max_side=heatmap_max_side,
        figures=figures,
    )
    write_text_atomic(path, page)
    log.debug("report %s: %d slides, %.1f MB", path, len(slides), len(page) / 1e6)
    return path


def render_report_html(
    slides: Sequence[SlideReport],
    *,
    title: str = "fivewsi predictions",
    summary: Mapping[str, Any] | None = None,
    run_info: Mapping[str, Any] | None = None,
    colormap: str = "turbo",
    heatmap_normalize: str = "rank",
    thumbnail_max_side: int = THUMBNAIL_MAX_SIDE,
    heatmap_max_side: int = HEATMAP_MAX_SIDE,
    figures: Sequence[SlideImage] = (),
) -> str:
    """The report page as a string.

    Args:
        slides: one entry per slide, failed ones included (shown with their error).
        title: page title and heading.
        summary: extra rows for the summary table (e.g. accuracy, classes), name → value.
        run_info: rows describing the run (model, run folder, versions), name → value;
            nested values are shown as compact JSON.
        colormap: the heatmaps' colour map, for the legend (see
            :data:`fivewsi.predict.heatmaps.COLORMAPS`).
        heatmap_normalize: how the heatmaps were normalised, for the legend's note.
        thumbnail_max_side: longer side of embedded thumbnails.
        heatmap_max_side: longer side of embedded heatmaps.
        figures: the run's evaluation figures (:func:`evaluation_figures`), shown below the
            summary in an "Evaluation" section; embedded as they are up to
            :data:`FIGURE_MAX_SIDE` pixels.

    Example:
        >>> page = render_report_html([SlideReport("a&b", predicted="<LUAD>")])
        >>> "a&amp;b" in page and "&lt;LUAD&gt;" in page and "<LUAD>" not in page
        True
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_css()}</style>",
        "</head>",
        "<body>",
        f"<h1>{_e(title)}</h1>",
        _summary_table(slides, summary or {}, run_info or {}),
        _evaluation_section(figures),
        _slide_index(slides),
        _legend(colormap, heatmap_normalize),
    ]
    for index, slide in enumerate(slides):
        try:
            parts.append(_slide_card(index, slide, thumbnail_max_side, heatmap_max_side))
        except Exception as error:  # one slide's odd data must not cost the whole page
            log.warning("report: could not render slide %s: %s", slide.slide_id, error)
            parts.append(_failed_render_card(index, slide, error))
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def image_data_uri(image: ImageSource, max_side: int) -> str:
    """``data:`` URI of an image, shrunk so its longer side is at most ``max_side``.

    PNG or JPEG bytes (or files) already small enough are embedded unchanged; anything else is
    decoded, shrunk and re-encoded as JPEG. Arrays are RGB ``uint8``.

    Example:
        >>> import numpy as np
        >>> image_data_uri(np.zeros((600, 300, 3), np.uint8), 200)[:23]
        'data:image/jpeg;base64,'
    """
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    if isinstance(image, np.ndarray):
        array = image
    else:
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        mime = _sniff_mime(data)
        array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if array is None:
            raise ValueError("not a readable PNG or JPEG image")
        if mime is not None and max(array.shape[:2]) <= max_side:
            return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"image must be uint8 RGB or grey, not {array.dtype} {array.shape}")
    height, width = array.shape[:2]
    if max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        array = cv2.resize(array, size, interpolation=cv2.INTER_AREA)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", array, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("could not encode the image as JPEG")
    return f"data:image/jpeg;base64,{base64.b64encode(encoded.tobytes()).decode('ascii')}"


def evaluation_figures(folder: str | os.PathLike[str]) -> list[SlideImage]:
    r"""The figures an evaluation folder lists in its ``metrics.json`` (``figures``: ``{"file",
    "title"}`` each), as images for :func:`render_report_html`.

    Only plain PNG file names directly in ``folder`` are taken (no ``/``, no ``..``, no link
    out of the folder); a folder without ``metrics.json`` or figures gives an empty list.

    Example:
        >>> import json, tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "roc.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        >>> _ = (folder / "metrics.json").write_text(json.dumps({"figures": [
        ...     {"file": "roc.png", "title": "ROC"}, {"file": "../x.png", "title": "out"}]}))
        >>> [f.title for f in evaluation_figures(folder)]
        ['ROC']
    """
    folder = Path(folder)
    try:
        info = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    listed = info.get(FIGURES_KEY) if isinstance(info, dict) else None
    if not isinstance(listed, list):
        return []
    root = folder.resolve()
    found = []
    for entry in listed:
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            continue
        name = entry["file"]
        path = folder / name
        if (Path(name).name != name or name in (".", "..") or not name.endswith(".png")
                or not path.is_file() or path.resolve().parent != root):
            log.warning("report: evaluation figure %r of %s skipped", name, folder)
            continue
        found.append(SlideImage(str(entry.get("title") or name), path))
    return found


# ----------------------------------------------------------------------------------------------
# Page parts


def _evaluation_section(figures: Sequence[SlideImage]) -> str:
    if not figures:
        return ""
    items = "".join(_figure(f, FIGURE_MAX_SIDE, "evaluation") for f in figures)
    return (f'<section class="evaluation" id="evaluation"><h2>Evaluation</h2>'
            f'<div class="gallery">{items}</div></section>')


def _summary_table(
    slides: Sequence[SlideReport], summary: Mapping[str, Any], run_info: Mapping[str, Any]
) -> str:
    ok = [s for s in slides if s.status == "ok"]
    failed = len(slides) - len(ok)
    counts = Counter(s.predicted for s in ok if s.predicted is not None)
    rows = [("Slides", str(len(slides)), "")]
    for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        rows.append((f"Predicted {name}", str(count), ""))
    rows.append(("Failed", str(failed), "failed" if failed else ""))
    rows += [(str(k), _format_value(v), "") for k, v in summary.items()]
    body = "".join(
        f'<tr class="{cls}"><th scope="row">{_e(k)}</th><td>{_e(v)}</td></tr>'
        if cls
        else f'<tr><th scope="row">{_e(k)}</th><td>{_e(v)}</td></tr>'
        for k, v, cls in rows
    )
    run_rows = "".join(
        f'<tr><th scope="row">{_e(k)}</th><td>{_e(_format_value(v))}</td></tr>'
        for k, v in run_info.items()
    )
    run = (
        f'<tbody class="run"><tr><th colspan="2" class="section">Run</th></tr>{run_rows}</tbody>'
        if run_rows
        else ""
    )
    return (
        '<table id="summary" class="summary">'
        '<thead><tr><th colspan="2">Summary</th></tr></thead>'
        f"<tbody>{body}</tbody>{run}</table>"
    )


def _slide_index(slides: Sequence[SlideReport]) -> str:
    if not slides:
        return '<p class="empty">No slides.</p>'
    rows = []
    for index, slide in enumerate(slides):
        confidence = slide.confidence
        render = f" (heatmaps not drawn: {slide.render_error})" if slide.render_error else ""
        rows.append(
            f'<tr class="{slide.status}">'
            f'<td><a href="#slide-{index}">{_e(slide.slide_id)}</a></td>'
            f"<td>{_e(slide.status)}</td>"
            f"<td>{_e(slide.predicted or '')}</td>"
            f"<td>{'' if confidence is None else _e(f'{confidence:.1%}')}</td>"
            f'<td class="error-text">{_e(slide.error or "")}'
            f"{_e(render)}"
            "</td></tr>"
        )
    return (
        '<table id="slides" class="index"><thead><tr><th>Slide</th><th>Status</th>'
        "<th>Prediction</th><th>Confidence</th><th>Error</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def heatmap_caption(name: str, label: str) -> str:
    """A gallery caption: the map's name and, when known, its range in absolute terms
    (:func:`fivewsi.predict.heatmaps.attention_label`).

    Example:
        >>> heatmap_caption("stas", "near-uniform (max/min 1.08×, entropy 1.00 of max)")
        'stas — near-uniform (max/min 1.08×, entropy 1.00 of max)'
        >>> heatmap_caption("stas", "")
        'stas'
    """
    return f"{name} — {label}" if label else name


def _legend(colormap: str, normalize: str) -> str:
    gradient = ", ".join(colormap_stops(colormap, 9))
    note = _NORMALIZE_NOTES.get(normalize, "each patch's score")
    return (
        '<div class="legend"><span>low</span>'
        f'<span class="ramp" style="background: linear-gradient(to right, {gradient})"></span>'
        f'<span>high</span><span class="note">heatmap colours: {_e(note)}; each caption '
        "gives the map's weights as multiples of uniform (1/N) and its entropy, and says "
        "when a map is near-uniform (entropy ≥ 0.99 of its maximum or max/min &lt; 1.5×): "
        "its colours then span differences too small to matter</span></div>"
    )


def _slide_card(index: int, slide: SlideReport, thumb_side: int, heatmap_side: int) -> str:
    parts = [
        f'<section class="slide {slide.status}" id="slide-{index}">',
        f'<h2>{_e(slide.slide_id)} <span class="badge {slide.status}">'
        f"{_e(slide.status)}</span></h2>",
    ]
    if slide.status == "failed" or slide.error:
        parts.append(f'<p class="error">Error: {_e(slide.error or "unknown error")}</p>')
    if slide.render_error:
        parts.append(
            f'<p class="error render-error">Heatmaps not drawn: {_e(slide.render_error)}</p>'
        )
    parts.append('<div class="row">')
    if slide.thumbnail is not None:
        parts.append(_figure(slide.thumbnail, thumb_side, "thumb"))
    parts.append('<div class="info">')
    parts.append(_prediction(slide))
    if slide.attributes:
        parts.append(_attribute_table(slide.attributes))
    if slide.description:
        parts.append(f'<p class="description"><b>Description:</b> {_e(slide.description)}</p>')
    parts.append(_details(slide))
    parts.append("</div></div>")
    if slide.report:
        parts.append(
            '<details class="report"><summary>Report</summary>'
            f"<pre>{_e(slide.report)}</pre></details>"
        )
    if slide.heatmaps:
        figures = "".join(_figure(h, heatmap_side, "heatmap") for h in slide.heatmaps)
        parts.append(f'<div class="gallery">{figures}</div>')
    parts.append("</section>")
    return "\n".join(parts)


def _failed_render_card(index: int, slide: SlideReport, error: Exception) -> str:
    return (
        f'<section class="slide failed" id="slide-{index}"><h2>{_e(slide.slide_id)}</h2>'
        f'<p class="error">Could not show this slide: {_e(error)}</p></section>'
    )


def _prediction(slide: SlideReport) -> str:
    if slide.predicted is None:
        return '<p class="prediction none">No prediction.</p>'
    confidence = slide.confidence
    head = f'<p class="prediction">Prediction: <strong>{_e(slide.predicted)}</strong>'
    if confidence is not None:
        head += f" ({_e(f'{confidence:.1%}')})"
    head += "</p>"
    if not slide.probabilities:
        return head
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td>{_bar(p)}</td><td class=\"num\">{_e(f'{p:.3f}')}</td></tr>"
        for name, p in sorted(slide.probabilities.items(), key=lambda item: -_finite(item[1]))
    )
    return f'{head}<table class="probabilities"><tbody>{rows}</tbody></table>'


def _attribute_table(rows: Sequence[AttributeRow]) -> str:
    body = "".join(
        f"<tr><td>{_e(row.question)}</td><td>{_e(row.answer)}</td>"
        f'<td class="num">{"" if row.score is None else _e(_format_value(row.score))}</td></tr>'
        for row in rows
    )
    return (
        '<table class="attributes"><thead><tr><th>Question</th><th>Answer</th>'
        f"<th>Score</th></tr></thead><tbody>{body}</tbody></table>"
    )


def _details(slide: SlideReport) -> str:
    items = [f"<dt>{_e(k)}</dt><dd>{_e(_format_value(v))}</dd>" for k, v in slide.details.items()]
    if slide.geojson:
        href = _safe_href(slide.geojson)
        link = f'<a href="{href}">{_e(slide.geojson)}</a>' if href else _e(slide.geojson)
        items.append(f"<dt>GeoJSON (QuPath)</dt><dd>{link}</dd>")
    return f'<dl class="details">{"".join(items)}</dl>' if items else ""


def _figure(image: SlideImage, max_side: int, cls: str) -> str:
    try:
        uri = image_data_uri(image.image, max_side)
    except (OSError, ValueError) as error:
        log.warning("report: image %r not embedded: %s", image.title, error)
        return (
            f'<figure class="{cls} missing"><div class="placeholder">image unavailable: '
            f"{_e(error)}</div><figcaption>{_e(image.title)}</figcaption></figure>"
        )
    img = f'<img src="{uri}" alt="{_e(image.title)}">'
    href = _safe_href(image.href) if image.href else None
    if href:
        img = f'<a href="{href}">{img}</a>'
    return f'<figure class="{cls}">{img}<figcaption>{_e(image.title)}</figcaption></figure>'


def _bar(value: float) -> str:
    width = min(100.0, max(0.0, _finite(value) * 100.0))
    return f'<span class="bar"><span style="width: {width:.1f}%"></span></span>'


# ----------------------------------------------------------------------------------------------
# Helpers


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _finite(value: float) -> float:
    value = float(value)
    return value if math.isfinite(value) else 0.0


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    if isinstance(value, (int, np.integer, str)):
        return str(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, sort_keys=isinstance(value, dict))
    return str(value)


def _safe_href(href: str) -> str | None:
    """A relative link, percent-encoded and escaped; None for anything with a scheme or host."""
    href = str(href).replace("\\", "/")
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or href.startswith("//"):
        log.debug("report: link %r dropped (only relative links are allowed)", href)
        return None
    return _e(quote(href, safe="/#?=&-_.~%"))


def _sniff_mime(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    return None


def _css() -> str:
    header = "#{:02x}{:02x}{:02x}".format(*SUMMARY_HEADER_RGB)
    return f"""
body {{ font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px;
  color: #1d1d1f; background: #fafafa; }}
h1 {{ font-size: 24px; margin: 0 0 16px; }}
h2 {{ font-size: 18px; margin: 0 0 8px; word-break: break-all; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; background: #fff; }}
th, td {{ border: 1px solid #d0d0d7; padding: 4px 8px; text-align: left; vertical-align: top; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
table.summary thead th {{ background: {header}; color: #fff; font-size: 16px; }}
table.summary th.section {{ background: #ece6f5; }}
table.summary tr.failed td, table.index tr.failed td {{ color: #b00020; font-weight: 600; }}
table.index thead th, table.attributes thead th {{ background: #eef0f4; }}
.legend {{ display: flex; align-items: center; gap: 8px; margin: 0 0 16px; font-size: 13px; }}
.legend .ramp {{ display: inline-block; width: 240px; height: 12px; border: 1px solid #999; }}
.legend .note {{ color: #666; }}
section.slide {{ background: #fff; border: 1px solid #d0d0d7; border-radius: 6px;
  padding: 12px 16px; margin: 0 0 16px; break-inside: avoid; }}
section.slide.failed {{ border-color: #b00020; background: #fff5f6; }}
.badge {{ font-size: 12px; padding: 2px 6px; border-radius: 4px; vertical-align: middle; }}
.badge.ok {{ background: #e3f4e8; color: #17603a; }}
.badge.failed {{ background: #b00020; color: #fff; }}
p.error {{ color: #b00020; font-weight: 600; white-space: pre-wrap; }}
.row {{ display: flex; flex-wrap: wrap; gap: 16px; }}
.info {{ flex: 1 1 360px; min-width: 0; }}
figure {{ margin: 0; }}
figure img {{ display: block; max-width: 100%; height: auto; border: 1px solid #ddd; }}
section.evaluation {{ background: #fff; border: 1px solid #d0d0d7; border-radius: 6px;
  padding: 12px 16px; margin: 0 0 16px; }}
figure.evaluation figcaption {{ max-width: none; }}
figcaption {{ font-size: 12px; color: #444; margin-top: 2px; max-width: 256px; }}
.placeholder {{ width: 200px; height: 120px; display: flex; align-items: center;
  justify-content: center; background: #eee; color: #666; font-size: 12px; padding: 4px; }}
.gallery {{ display: flex; flex-wrap: wrap; gap: 12px; margin-top: 12px; }}
.bar {{ display: inline-block; width: 160px; height: 10px; background: #e6e6ea;
  vertical-align: middle; }}
.bar > span {{ display: block; height: 100%; background: #3b6fd8; }}
.prediction {{ font-size: 16px; margin: 0 0 4px; }}
pre {{ white-space: pre-wrap; background: #f4f4f6; padding: 8px; font-size: 12px; }}
dl.details {{ display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px;
  font-size: 13px; }}
dl.details dt {{ color: #555; }}
dl.details dd {{ margin: 0; }}
@media print {{ body {{ background: #fff; }} }}
"""
