"""Prediction outputs: heatmaps, QuPath GeoJSON and the offline HTML report."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest

from fivewsi.predict.geojson import patch_geojson, write_geojson
from fivewsi.predict.heatmaps import (
    HeatmapCanvas,
    blank_thumbnail,
    colorbar,
    colormap_stops,
    encode_png,
    normalize_scores,
    render_heatmap,
    save_png,
)
from fivewsi.predict.html import (
    HEATMAP_MAX_SIDE,
    SUMMARY_HEADER_RGB,
    THUMBNAIL_MAX_SIDE,
    AttributeRow,
    SlideImage,
    SlideReport,
    image_data_uri,
    render_report_html,
    write_report_html,
)

XSS = "<script>alert(1)</script> & co"
GREY = 128


def grid(cols: int, rows: int, size: int, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Row-major top-left corners of a cols x rows patch grid."""
    xs, ys = np.meshgrid(np.arange(cols) * size + origin[0], np.arange(rows) * size + origin[1])
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int64)


def grey_thumbnail(height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), GREY, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# Heatmaps


def test_heatmap_shape_dtype_and_max_side() -> None:
    thumb = grey_thumbnail(300, 400)
    coords = grid(4, 3, 1000)
    image = render_heatmap(thumb, coords, 1000, np.arange(12.0), 10.0, max_side=None)
    assert image.shape == (300, 400, 3) and image.dtype == np.uint8
    small = render_heatmap(thumb, coords, 1000, np.arange(12.0), 10.0, max_side=100)
    assert small.shape == (75, 100, 3)
    # Never enlarged.
    assert render_heatmap(thumb, coords, 1000, np.ones(12), 10.0, max_side=4096).shape == (
        300,
        400,
        3,
    )


def test_high_scores_are_hot_and_at_the_right_cells() -> None:
    # 4 x 3 patches of 100 level-0 px at downsample 10: each cell is 10 x 10 thumbnail pixels,
    # the thumbnail is wider than the grid so columns 40..59 lie outside every patch.
    thumb = grey_thumbnail(30, 60)
    coords = grid(4, 3, 100)
    scores = np.zeros(12)
    scores[3] = 5.0  # column 3, row 0
    scores[8] = -5.0  # column 0, row 2
    image = render_heatmap(thumb, coords, 100, scores, 10.0, alpha=1.0, normalize="minmax")
    bar = colorbar(256, 1)
    hot, cold = bar[0, -1], bar[0, 0]
    np.testing.assert_array_equal(image[0:10, 30:40].reshape(-1, 3), np.tile(hot, (100, 1)))
    np.testing.assert_array_equal(image[20:30, 0:10].reshape(-1, 3), np.tile(cold, (100, 1)))
    assert int(hot[0]) - int(hot[2]) > 80  # turbo's top end is red
    assert int(cold[2]) - int(cold[0]) > 0  # and its bottom end blue
    # Outside the patches the thumbnail is untouched.
    assert (image[:, 40:] == GREY).all()
    # Blending: at alpha 0.5 a cell is halfway between the thumbnail and its colour.
    half = render_heatmap(thumb, coords, 100, scores, 10.0, alpha=0.5, normalize="minmax")
    expected = (hot.astype(float) + GREY) / 2
    assert np.abs(half[5, 35].astype(float) - expected).max() <= 1


def test_canvas_matches_a_per_patch_reference() -> None:
    """The vectorised pixel → patch map agrees with painting each patch on its own."""
    rng = np.random.default_rng(7)
    size, origin = 64, (32, 16)  # a grid that does not start at the slide's corner
    coords = grid(12, 9, size, origin)
    coords = coords[rng.random(len(coords)) < 0.6]
    scores = rng.random(len(coords))
    downsample = 9.7  # patches cover a fractional number of pixels
    height, width = 62, 83
    thumb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = HeatmapCanvas(thumb, coords, size, downsample, max_side=None).render(
        scores, alpha=1.0, normalize="none"
    )
    levels = np.round(scores * 255).astype(np.uint8).reshape(-1, 1)
    colours = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    expected = thumb.copy()
    centre_x = (np.arange(width) + 0.5) * downsample
    centre_y = (np.arange(height) + 0.5) * downsample
    for i, (x, y) in enumerate(coords):
        cols = (centre_x >= x) & (centre_x < x + size)
        rows = (centre_y >= y) & (centre_y < y + size)
        expected[np.ix_(rows, cols)] = colours[i, 0]
    np.testing.assert_array_equal(image, expected)


def test_heatmap_robust_to_empty_constant_and_nan() -> None:
    thumb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    empty = render_heatmap(thumb, np.zeros((0, 2)), 100, np.zeros(0), 10.0)
    np.testing.assert_array_equal(empty, thumb)

    coords = grid(4, 3, 100)
    constant = HeatmapCanvas(thumb, coords, 100, 10.0).render(np.full(12, 3.0), alpha=1.0)
    painted = constant[:30, :40].reshape(-1, 3)
    assert len(np.unique(painted, axis=0)) == 1  # one colour, the middle of the map
    np.testing.assert_array_equal(painted[0], colorbar(256, 1)[0, 128])

    scores = np.linspace(0, 1, 12)
    scores[5] = np.nan  # column 1, row 1
    scores[6] = np.inf
    image = render_heatmap(thumb, coords, 100, scores, 10.0, alpha=1.0)
    np.testing.assert_array_equal(image[10:20, 10:30], thumb[10:20, 10:30])
    assert not np.array_equal(image[0:10, 0:10], thumb[0:10, 0:10])
    all_nan = render_heatmap(thumb, coords, 100, np.full(12, np.nan), 10.0)
    np.testing.assert_array_equal(all_nan, thumb)


def test_heatmap_bounded_by_image_size_for_huge_extents() -> None:
    # Patches of 1 level-0 pixel spread over a million pixels: no dense level-0 grid is built.
    rng = np.random.default_rng(1)
    coords = rng.integers(0, 1_000_000, (5000, 2))
    image = render_heatmap(
        grey_thumbnail(100, 100), coords, 1, rng.random(5000), 10_000.0, alpha=1.0
    )
    assert image.shape == (100, 100, 3)


def test_heatmap_argument_errors() -> None:
    thumb = grey_thumbnail(10, 10)
    coords = grid(2, 2, 50)
    with pytest.raises(ValueError, match="4 patches"):
        render_heatmap(thumb, coords, 50, np.zeros(3), 10.0)
    with pytest.raises(ValueError, match="colormap"):
        render_heatmap(thumb, coords, 50, np.zeros(4), 10.0, colormap="rainbow")
    with pytest.raises(ValueError, match="normalize"):
        render_heatmap(thumb, coords, 50, np.zeros(4), 10.0, normalize="zscore")
    with pytest.raises(ValueError, match="RGB uint8"):
        render_heatmap(thumb.astype(np.float32), coords, 50, np.zeros(4), 10.0)
    with pytest.raises(ValueError, match="alpha"):
        render_heatmap(thumb, coords, 50, np.zeros(4), 10.0, alpha=1.5)


def test_normalize_scores() -> None:
    ranked = normalize_scores(np.array([10.0, -3.0, 10.0, np.nan, 0.0]))
    np.testing.assert_allclose(ranked[[0, 1, 2, 4]], [5 / 6, 0.0, 5 / 6, 1 / 3])
    assert np.isnan(ranked[3])
    np.testing.assert_allclose(normalize_scores(np.array([2.0, 4.0, 3.0]), "minmax"), [0, 1, 0.5])
    np.testing.assert_allclose(normalize_scores(np.array([-1.0, 0.3, 7.0]), "none"), [0, 0.3, 1])
    assert normalize_scores(np.array([4.0]), "rank").tolist() == [0.5]
    assert normalize_scores(np.zeros(0)).shape == (0,)


def test_save_png_round_trip_and_legend(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = save_png(tmp_path / "heatmaps" / "s1" / "attention.png", image)
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, image)  # RGB in, RGB out
    assert sorted(p.name for p in path.parent.iterdir()) == ["attention.png"]
    assert encode_png(image)[:8] == b"\x89PNG\r\n\x1a\n"

    bar = colorbar(64, 5)
    assert bar.shape == (5, 64, 3)
    assert colorbar(5, 64, vertical=True).shape == (64, 5, 3)
    np.testing.assert_array_equal(colorbar(5, 64, vertical=True)[0, 0], bar[0, -1])  # high on top
    stops = colormap_stops("turbo", 5)
    assert len(stops) == 5 and all(re.fullmatch(r"#[0-9a-f]{6}", s) for s in stops)
    assert stops[0] == "#{:02x}{:02x}{:02x}".format(*bar[0, 0])


def test_blank_thumbnail_covers_the_patches() -> None:
    coords = grid(6, 2, 512)
    thumb, downsample = blank_thumbnail(coords, 512, max_side=120)
    assert max(thumb.shape[:2]) == 120
    assert thumb.shape[1] * downsample == pytest.approx(6 * 512, rel=0.01)
    image = render_heatmap(thumb, coords, 512, np.arange(12.0), downsample, alpha=1.0)
    assert (image != thumb).any(axis=2).mean() > 0.95  # nearly every pixel is a patch


# ----------------------------------------------------------------------------------------------
# GeoJSON


def test_geojson_structure_for_qupath(tmp_path: Path) -> None:
    coords = grid(3, 2, 256, origin=(1000, 2000))
    rng = np.random.default_rng(3)
    attention = rng.random(6).astype(np.float32)
    vascular = rng.normal(size=6)
    vascular[4] = np.nan
    fc = patch_geojson(
        coords,
        256,
        {"attention": attention, "vascular invasion": vascular},
        slide_id="TCGA-01",
    )
    assert fc["type"] == "FeatureCollection"
    assert fc["fivewsi"]["slide_id"] == "TCGA-01"
    assert len(fc["features"]) == 6
    for i, feature in enumerate(fc["features"]):
        assert feature["type"] == "Feature"
        assert feature["geometry"]["type"] == "Polygon"
        (ring,) = feature["geometry"]["coordinates"]
        assert len(ring) == 5 and ring[0] == ring[-1]
        x, y = coords[i].tolist()
        assert ring[:4] == [[x, y], [x + 256, y], [x + 256, y + 256], [x, y + 256]]
        assert all(type(v) is int for point in ring for v in point)
        properties = feature["properties"]
        assert properties["objectType"] == "tile"
        assert "classification" not in properties
        measurements = properties["measurements"]
        assert measurements["attention"] == pytest.approx(float(attention[i]), abs=1e-6)
        if i == 4:
            assert "vascular invasion" not in measurements  # NaN left out, not null
        else:
            assert measurements["vascular invasion"] == pytest.approx(vascular[i], abs=1e-6)
    text = json.dumps(fc, allow_nan=False)  # serialisable, no NaN anywhere
    assert "NaN" not in text and "null" not in text

    path = write_geojson(tmp_path / "geojson" / "TCGA-01.geojson", fc)
    assert json.loads(path.read_text()) == fc
    assert [p.name for p in path.parent.iterdir()] == ["TCGA-01.geojson"]


def test_geojson_classification_detection_and_errors(tmp_path: Path) -> None:
    coords = grid(2, 1, 100)
    fc = patch_geojson(
        coords,
        100,
        {"score": np.array([0.1, 0.9])},
        slide_id="s",
        object_type="detection",
        classifications=[None, "Tumor"],
        class_colors={"Tumor": (200, 0, 0)},
    )
    first, second = (f["properties"] for f in fc["features"])
    assert first["objectType"] == second["objectType"] == "detection"
    assert "classification" not in first
    assert second["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    empty = patch_geojson(np.zeros((0, 2)), 100, {"score": np.zeros(0)}, slide_id="s")
    assert empty["features"] == []
    with pytest.raises(ValueError, match="object_type"):
        patch_geojson(coords, 100, {}, slide_id="s", object_type="cell-ish")
    with pytest.raises(ValueError, match="3 scores for 2 patches"):
        patch_geojson(coords, 100, {"score": np.zeros(3)}, slide_id="s")
    with pytest.raises(ValueError, match="JSON compliant"):
        write_geojson(tmp_path / "bad.geojson", {"bad": float("nan")})
    assert not (tmp_path / "bad.geojson").exists()


# ----------------------------------------------------------------------------------------------
# HTML report


class _Structure(HTMLParser):
    """Collects tags and checks that non-void elements are balanced."""

    VOID: ClassVar[set[str]] = {"meta", "img", "br", "hr", "link", "input", "source"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.starts: list[tuple[str, dict[str, str | None]]] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
            return
        self.stack.pop()


def parse(page: str) -> _Structure:
    parser = _Structure()
    parser.feed(page)
    parser.close()
    assert not parser.errors, parser.errors[:3]
    assert parser.stack == []
    return parser


def sample_slides(tmp_path: Path) -> list[SlideReport]:
    rng = np.random.default_rng(4)
    thumb = cv2.GaussianBlur(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8), (9, 9), 3)
    coords = grid(8, 6, 1000)
    canvas = HeatmapCanvas(thumb, coords, 1000, 10.0)
    heatmap_file = tmp_path / "heatmaps" / "ok-1" / "q2.png"
    save_png(heatmap_file, canvas.render(rng.random(48)))
    return [
        SlideReport(
            "ok-1",
            predicted="LUAD",
            probabilities={"LUAD": 0.82, "LUSC": 0.18},
            attributes=[
                AttributeRow("Vascular invasion?", "vascular invasion present", 0.71),
                ("Pleural invasion?", XSS, 0.2),  # tuples are accepted too
            ],
            description="poorly differentiated; vascular invasion present",
            report=XSS,
            thumbnail=SlideImage("thumbnail", thumb),
            heatmaps=[
                SlideImage("attention: LUAD", canvas.render(rng.random(48))),
                SlideImage(XSS, heatmap_file, href="heatmaps/ok-1/q2.png"),
            ],
            geojson="geojson/ok-1.geojson",
            details={"patches": 48, "seconds": 1.25},
        ),
        SlideReport("ok-2", predicted="LUSC", probabilities={"LUAD": 0.4, "LUSC": 0.6}),
        SlideReport("broken<1>", status="failed", error=f"OpenSlideError: {XSS}"),
    ]


def test_report_escapes_all_text_and_shows_failures(tmp_path: Path) -> None:
    slides = sample_slides(tmp_path)
    page = render_report_html(
        slides,
        title=f"run {XSS}",
        summary={"note": XSS},
        run_info={"model": "five", "options": {"text": XSS}},
    )
    assert "<script" not in page.lower()  # the page has no script at all, and none leaks in
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    assert "broken&lt;1&gt;" in page and "broken<1>" not in page
    structure = parse(page)
    tags = structure.starts
    # Summary: counts per predicted class and the failure count.
    assert re.search(r"Predicted LUAD</th><td>1</td>", page)
    assert re.search(r"Predicted LUSC</th><td>1</td>", page)
    assert re.search(r'<tr class="failed"><th scope="row">Failed</th><td>1</td>', page)
    # Every slide has a card; the failed one carries its error, in the index table too.
    sections = [a for t, a in tags if t == "section"]
    assert [a["id"] for a in sections] == ["slide-0", "slide-1", "slide-2"]
    assert "failed" in (sections[2]["class"] or "")
    assert page.count("OpenSlideError: &lt;script&gt;") == 2
    # Tables: summary, slide index, probabilities and attributes of the first slide.
    assert sum(1 for t, a in tags if t == "table" and a.get("id") == "summary") == 1
    assert sum(1 for t, a in tags if t == "table" and a.get("class") == "attributes") == 1
    # Two heatmaps plus the thumbnail, all embedded.
    images = [a["src"] or "" for t, a in tags if t == "img"]
    assert len(images) == 3 and all(src.startswith("data:image/") for src in images)


def test_report_shows_a_render_error_escaped() -> None:
    slide = SlideReport("s<1>", predicted="LUAD", probabilities={"LUAD": 0.9, "LUSC": 0.1},
                        render_error=f"OSError: {XSS}")
    page = render_report_html([slide])
    assert "<script" not in page.lower()
    assert page.count("heatmaps not drawn: OSError: &lt;script&gt;") == 1  # slide index
    assert page.count("Heatmaps not drawn: OSError: &lt;script&gt;") == 1  # its card
    assert 'class="slide ok"' in page  # the prediction still stands


def test_report_is_offline(tmp_path: Path) -> None:
    slides = sample_slides(tmp_path)
    slides[1].geojson = "https://example.org/steal.geojson"
    slides[1].heatmaps = [
        SlideImage("remote", encode_png(grey_thumbnail(8, 8)), href="javascript:alert(1)"),
        SlideImage("remote2", encode_png(grey_thumbnail(8, 8)), href="//example.org/x.png"),
    ]
    page = render_report_html(slides)
    structure = parse(page)
    links = [
        value or ""
        for _, attrs in structure.starts
        for key, value in attrs.items()
        if key in ("src", "href")
    ]
    assert links
    for link in links:
        assert not re.match(r"\s*(https?:|//|javascript:)", link, re.I), link
        assert link.startswith(("data:image/", "#")) or not re.match(r"[a-z]+:", link)
        assert "javascript" not in link.lower() and "example.org" not in link  # dropped
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page)
    assert '<a href="heatmaps/ok-1/q2.png">' in page  # relative links are kept
    assert "https://example.org/steal.geojson" in page  # shown as text, not linked
    assert 'href="https://' not in page


def test_embedded_images_are_capped(tmp_path: Path) -> None:
    big = np.random.default_rng(5).integers(0, 256, (900, 1200, 3), dtype=np.uint8)
    path = save_png(tmp_path / "big.png", big)
    for source in (big, path, str(path), path.read_bytes()):
        uri = image_data_uri(source, HEATMAP_MAX_SIDE)
        mime, data = uri.split(",", 1)
        assert mime == "data:image/jpeg;base64"
        decoded = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
        assert decoded.shape == (192, HEATMAP_MAX_SIDE, 3)
    small = encode_png(big[:50, :60])
    assert image_data_uri(small, THUMBNAIL_MAX_SIDE) == (
        "data:image/png;base64," + base64.b64encode(small).decode()
    )


def test_report_survives_broken_images(tmp_path: Path) -> None:
    slides = sample_slides(tmp_path)
    slides[1].thumbnail = SlideImage("thumbnail", tmp_path / "missing.png")
    slides[1].heatmaps = [SlideImage("garbage", b"not an image")]
    path = write_report_html(tmp_path / "out" / "report.html", slides, title="t")
    page = path.read_text(encoding="utf-8")
    parse(page)
    assert page.count("image unavailable") == 2
    assert page.count('<section class="slide') == 3
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # atomic, no leftovers


def test_slide_report_validation() -> None:
    with pytest.raises(ValueError, match="status"):
        SlideReport("s", status="crashed")
    report = SlideReport("s", predicted="A", probabilities={"A": 0.3, "B": 0.7})
    assert report.confidence == pytest.approx(0.3)
    assert SlideReport("s").confidence is None
    page = render_report_html([])
    assert "No slides." in page and 'id="summary"' in page


# ----------------------------------------------------------------------------------------------
# Headless Chromium

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(f"no headless browser on PATH (looked for {', '.join(BROWSERS)}); CI installs "
                "Debian's chromium")


def _run_browser(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        "--no-default-browser-check",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = _browser()
    page = write_report_html(tmp_path / "report.html", sample_slides(tmp_path), title="smoke")
    url = page.resolve().as_uri()
    shot = tmp_path / "shot.png"
    result = _run_browser(
        browser, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,1600", url
    )
    assert shot.exists(), result.stderr[-2000:]
    image = cv2.cvtColor(cv2.imread(str(shot)), cv2.COLOR_BGR2RGB)
    assert image.shape[:2] == (1600, 1280)
    assert image.std() > 20  # not blank
    assert len(np.unique(image.reshape(-1, 3)[::7], axis=0)) > 200  # text, tables, heatmaps
    # The summary table's header colour is on screen, so the table is visible.
    header = np.abs(image.astype(int) - np.array(SUMMARY_HEADER_RGB)).max(axis=2) <= 6
    assert header.sum() > 2000, header.sum()
    assert np.nonzero(header)[0].min() < 300  # at the top of the page

    dom = _run_browser(browser, tmp_path / "profile", "--dump-dom", url).stdout
    assert '<table id="summary"' in dom
    assert dom.count('<section class="slide') == 3
    assert 'id="slide-2"' in dom and "OpenSlideError" in dom
    assert "<script>alert" not in dom


def test_report_shows_the_evaluation_figures_escaped(tmp_path: Path) -> None:
    from fivewsi.evaluation import figures
    from fivewsi.predict.html import evaluation_figures

    folder = tmp_path / "eval"
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    roc = figures.roc_figure(folder / "roc.png", np.array([0, 1, 1, 0]), probs, ["a", "b"])
    outside = tmp_path / "outside.png"
    outside.write_bytes(roc.read_bytes())
    (folder / "link.png").symlink_to(outside)
    listed = [{"file": "roc.png", "title": "ROC <script>alert(1)</script>"},
              {"file": "../outside.png", "title": "up"},
              {"file": str(outside), "title": "absolute"},
              {"file": "link.png", "title": "symlink out"},
              {"file": "missing.png", "title": "missing"},
              {"file": "metrics.json", "title": "not a figure"}]
    (folder / "metrics.json").write_text(json.dumps({"figures": listed}))
    found = evaluation_figures(folder)
    assert [f.title for f in found] == [listed[0]["title"]]
    page = render_report_html(sample_slides(tmp_path), figures=found)
    assert '<section class="evaluation" id="evaluation"><h2>Evaluation</h2>' in page
    assert "ROC &lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    # embedded as it is: the PNG's own bytes, no link to a file
    uri = "data:image/png;base64," + base64.b64encode(roc.read_bytes()).decode("ascii")
    assert uri in page
    assert evaluation_figures(tmp_path / "nothing") == []
    assert "Evaluation</h2>" not in render_report_html([])
