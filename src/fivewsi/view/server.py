"""The ``fivewsi view`` web app (starlette): pages, JSON, deep-zoom tiles, DIR's own files.

Routes (GET and HEAD only; see docs/data-contracts.md)::

    /                                         index page (static/index.html)
    /slide/{key}                              slide page (static/slide.html)
    /static/{name}                            the package's own JS, CSS and vendored viewer
    /api/slides                               every slide: prediction, probabilities, status
    /api/slides/{key}                         one slide: size, mpp, layers, links
    /api/slides/{key}/patches                 patch coords and every score per layer
    /dzi/{key}.dzi, /dzi/{key}_files/{level}/{col}_{row}.jpeg     the slide (OpenSlide)
    /layers/{key}/{layer}.dzi, /layers/{key}/{layer}_files/{level}/{col}_{row}.png
                                              layer tiles: a score layer's index, outline,
                                              grid, canvas (base of an image-less slide)
    /files/{path}                             DIR's own files (report.html, GeoJSON, PNGs)

Every slide is reached by its key and every file by an exact entry of the allow-list built at
start-up (:mod:`fivewsi.view.catalog`), so no request names a path on disk. :class:`Guard`
wraps the app: only GET/HEAD; the Host header must be a loopback name unless a token is set
(DNS rebinding); with a token, every request carries it (``?token=`` once, which sets an
HttpOnly cookie, or the cookie) and is compared in constant time.

Example:
    >>> from starlette.testclient import TestClient
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "predictions.csv").write_text(
    ...     "slide_id,status,error,predicted,p_A\\ns1,ok,,A,1\\n")
    >>> client = TestClient(create_app(d), base_url="http://127.0.0.1")
    >>> client.get("/api/slides").json()["slides"][0]["slide_id"]
    's1'
    >>> client.post("/api/slides").status_code
    405
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import os
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from fivewsi.view.catalog import Catalog, SlideEntry, load_catalog
from fivewsi.view.tiles import (
    LayerGeometry,
    LRUCache,
    PatchGrid,
    SlideTiles,
    encode_png_rgba,
    mask_tile,
    outline_tile,
    render_layer_tile,
    score_colours,
)

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
VENDOR = STATIC / "vendor" / "openseadragon"
#: The token's cookie is named per port (cookies ignore ports): two viewers on one host keep theirs.
TOKEN_COOKIE = "fivewsi_view_token_{port}"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
OVERLAYS = ("outline", "grid", "canvas")
#: Longer side of the thumbnail the tissue outline is detected on.
TISSUE_SIDE = 2048
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml",
          ".json": "application/json", ".geojson": "application/geo+json",
          ".csv": "text/csv; charset=utf-8", ".md": "text/markdown; charset=utf-8",
          ".txt": "text/plain; charset=utf-8", ".jpeg": "image/jpeg"}
#: Pages of the package: scripts only from this server, no framing, no referrer.
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'")
#: DIR's own files (report.html is self-contained): no script runs.
FILE_CSP = ("default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
            "frame-ancestors 'none'")


def assets_missing() -> bool:
    """Whether the vendored OpenSeadragon is absent (a source checkout before ``make assets``)."""
    return not (VENDOR / "openseadragon.min.js").is_file()


def static_files() -> dict[str, Path]:
    """The package's own static files by their name under ``/static/`` (the allow-list)."""
    return {p.relative_to(STATIC).as_posix(): p for p in sorted(STATIC.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and "__pycache__" not in p.parts}


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only.

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
        (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Viewer:
    """DIR's catalog, tile caches and the JSON it serves."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.slide_tiles = SlideTiles()
        self.layer_tiles = LRUCache(4096)
        self._grids = LRUCache(16, once=True)
        self._luts = LRUCache(256, once=True)
        self._tissue = LRUCache(8, once=True)  # ~1 s and ~100 MB each: made once, not per tile
        self._sizes: dict[str, tuple[int, int] | None] = {}
        self._lock = threading.Lock()

    def entry(self, key: str) -> SlideEntry:
        if key not in self.catalog.slides:
            raise KeyError(key)
        return self.catalog.slides[key]

    def image_size(self, entry: SlideEntry) -> tuple[int, int] | None:
        """The slide image's size, None when it is not at hand or does not open."""
        with self._lock:
            if entry.key in self._sizes:
                return self._sizes[entry.key]
        size = None
        if entry.slide_path is not None:
            try:
                info = self.slide_tiles.info(entry.slide_path)
                size = (int(info["width"]), int(info["height"]))
            except Exception as exc:  # the page falls back to the patch canvas
                log.warning("%s: slide image not opened: %s", entry.slide_id, exc)
        with self._lock:
            self._sizes[entry.key] = size
        return size

    def geometry(self, entry: SlideEntry) -> LayerGeometry | None:
        size = self.image_size(entry)
        if size is not None:
            return LayerGeometry(*size)
        patches = self.catalog.patches(entry.key)
        if patches is None or not len(patches.coords):
            return None
        extent = patches.coords.max(axis=0) + patches.size
        return LayerGeometry(int(extent[0]), int(extent[1]))

    def summary(self, entry: SlideEntry) -> dict[str, Any]:
        return {
            "key": entry.key, "slide_id": entry.slide_id, "status": entry.status,
            "error": entry.error, "predicted": entry.predicted, "label": entry.label,
            "probabilities": entry.probabilities,
            "attributes": [{"question": k, "answer": a, "probability": p}
                           for k, (a, p) in entry.attributes.items()],
            "description": entry.description, "n_patches": entry.n_patches,
            "render_error": entry.render_error,
        }

    def slides(self) -> dict[str, Any]:
        c = self.catalog
        return {"kind": c.kind, "classes": c.classes, "calibration": c.calibration,
                "calibrated": c.calibration.startswith("calibrated"),
                "files": _links(c, ["report.html", "metrics.json", "predictions.csv"]),
                "figures": [{"title": title, "href": f"/files/{quote(p)}"}
                            for title, p in c.figures],
                "slides": [self.summary(e) for e in c.slides.values()]}

    def slide(self, entry: SlideEntry) -> dict[str, Any]:
        key = quote(entry.key, safe="")
        patches = self.catalog.patches(entry.key)
        geometry = self.geometry(entry)
        layers = []
        if patches is not None and geometry is not None:
            for i, layer in enumerate(patches.layers()):
                layers.append({
                    "id": str(i), "name": layer.name,
                    "kind": "class" if layer.name.startswith("class ") else "question",
                    "min": _finite(layer.minimum), "max": _finite(layer.maximum),
                    "label": layer.label, "near_uniform": layer.near_uniform,
                    "dzi": f"/layers/{key}/{i}.dzi",
                })
        image = self.image_size(entry) is not None
        return {
            **self.summary(entry),
            "calibration": self.catalog.calibration,
            "image": image,
            "width": geometry.width if geometry else None,
            "height": geometry.height if geometry else None,
            "mpp": entry.slide_mpp,
            "patch_size": patches.size if patches is not None else None,
            "dzi": (f"/dzi/{key}.dzi" if image else
                    f"/layers/{key}/canvas.dzi" if geometry else None),
            "layers": layers,
            "overlays": ({name: f"/layers/{key}/{name}.dzi" for name in ("outline", "grid")}
                         if geometry and patches is not None else {}),
            "colormap": _stops(),
            "links": {
                "geojson": f"/files/{quote(entry.geojson)}" if entry.geojson else None,
                "report": "/files/report.html" if "report.html" in self.catalog.files else None,
                "heatmaps": {name: f"/files/{quote(p)}" for name, p in entry.heatmaps.items()},
            },
        }

    def patches(self, entry: SlideEntry) -> dict[str, Any]:
        patches = self.catalog.patches(entry.key)
        if patches is None:
            return {"size": None, "coords": [], "layers": [], "scores": []}
        scores = np.round(patches.scores, 6)
        return {
            "size": patches.size,
            "coords": patches.coords.tolist(),
            "layers": patches.names,
            "scores": [[None if math.isnan(v) else v for v in row] for row in scores.tolist()],
        }

    def layer_dzi(self, entry: SlideEntry, layer: str) -> str:
        geometry, _ = self._layer(entry, layer)
        return geometry.dzi("png")

    def layer_tile(self, entry: SlideEntry, layer: str, level: int, col: int, row: int) -> bytes:
        def make() -> bytes:
            geometry, grid = self._layer(entry, layer)
            index = grid.tile_index(geometry, level, col, row)
            if layer == "outline":
                tissue = self.tissue(entry)
                if tissue is not None:
                    mask = mask_tile(tissue[0], tissue[1], geometry, level, col, row)
                    return encode_png_rgba(outline_tile(mask))
            if layer in OVERLAYS:
                return encode_png_rgba(render_layer_tile(index, layer))
            lut = self._luts.get((entry.key, layer), lambda: score_colours(
                self.catalog.patches(entry.key).scores[:, int(layer)]))  # type: ignore[union-attr]
            return encode_png_rgba(render_layer_tile(index, "scores", lut))

        return self.layer_tiles.get((entry.key, layer, level, col, row), make)

    def tissue(self, entry: SlideEntry) -> tuple[np.ndarray, float] | None:
        """The slide's tissue mask (fivewsi's own detection on a thumbnail) and its downsample;
        None when the slide image is not at hand (the outline is then the patches')."""

        def make() -> tuple[np.ndarray, float] | None:
            from fivewsi.slides.readers import open_slide
            from fivewsi.slides.tissue import detect_tissue

            if entry.slide_path is None or self.image_size(entry) is None:
                return None
            try:
                with open_slide(entry.slide_path, mpp=entry.slide_mpp) as reader:
                    thumbnail, downsample = reader.read_thumbnail(TISSUE_SIDE)
                    mpp = reader.mpp
                return detect_tissue(thumbnail, mpp=mpp * downsample if mpp else None), \
                    downsample
            except Exception as exc:  # the patches' outline stands in
                log.warning("%s: tissue not detected: %s", entry.slide_id, exc)
                return None

        return self._tissue.get(entry.key, make)  # type: ignore[no-any-return]

    def _layer(self, entry: SlideEntry, layer: str) -> tuple[LayerGeometry, PatchGrid]:
        patches = self.catalog.patches(entry.key)
        geometry = self.geometry(entry)
        if patches is None or geometry is None:
            raise KeyError(layer)
        if layer not in OVERLAYS and not (layer.isdigit() and int(layer) < len(patches.names)):
            raise KeyError(layer)
        grid = self._grids.get(entry.key, lambda: PatchGrid(patches.coords, patches.size))
        return geometry, grid


def create_app(
    root: str | os.PathLike[str] | Catalog,
    *,
    token: str | None = None,
    allowed_hosts: tuple[str, ...] | None = LOOPBACK_NAMES,
) -> Guard:
    """The viewer of ``root`` (a folder or its :class:`Catalog`), wrapped in :class:`Guard`.

    Args:
        token: when given, every request must carry it (``?token=`` or the cookie it sets).
        allowed_hosts: Host header names accepted (any port); None accepts any (with a token).
    """
    catalog = root if isinstance(root, Catalog) else load_catalog(root)
    viewer = Viewer(catalog)
    static = static_files()

    def page(name: str) -> Response:
        return FileResponse(STATIC / name, media_type=_TYPES[".html"],
                            headers={"Content-Security-Policy": PAGE_CSP,
                                     "Cache-Control": "no-store"})

    async def index(request: Request) -> Response:
        return page("index.html")

    async def slide_page(request: Request) -> Response:
        viewer.entry(request.path_params["key"])
        return page("slide.html")

    async def static_file(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in static:
            return _not_found()
        path = static[name]
        return FileResponse(path, media_type=_TYPES.get(path.suffix, "application/octet-stream"))

    async def own_file(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in catalog.files:
            return _not_found()
        path = catalog.files[name]
        return FileResponse(path, media_type=_TYPES.get(path.suffix, "application/octet-stream"),
                            headers={"Content-Security-Policy": FILE_CSP})

    async def api_slides(request: Request) -> Response:
        return _json(viewer.slides())

    async def api_slide(request: Request) -> Response:
        entry = viewer.entry(request.path_params["key"])
        return _json(await run_in_threadpool(viewer.slide, entry))

    async def api_patches(request: Request) -> Response:
        entry = viewer.entry(request.path_params["key"])
        return _json(await run_in_threadpool(viewer.patches, entry))

    async def slide_dzi(request: Request) -> Response:
        entry = viewer.entry(request.path_params["key"])
        if entry.slide_path is None or viewer.image_size(entry) is None:
            return _not_found()
        info = await run_in_threadpool(viewer.slide_tiles.info, entry.slide_path)
        return Response(info["dzi"], media_type="application/xml")

    async def slide_tile(request: Request) -> Response:
        p = request.path_params
        entry = viewer.entry(p["key"])
        if entry.slide_path is None or viewer.image_size(entry) is None:
            return _not_found()
        data = await run_in_threadpool(viewer.slide_tiles.tile, entry.slide_path, p["level"],
                                       p["col"], p["row"])
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    async def layer_dzi(request: Request) -> Response:
        p = request.path_params
        entry = viewer.entry(p["key"])
        text = await run_in_threadpool(viewer.layer_dzi, entry, p["layer"])
        return Response(text, media_type="application/xml")

    async def layer_tile(request: Request) -> Response:
        p = request.path_params
        entry = viewer.entry(p["key"])
        data = await run_in_threadpool(viewer.layer_tile, entry, p["layer"], p["level"],
                                       p["col"], p["row"])
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    async def missing(request: Request, exc: Exception) -> Response:
        return _not_found()

    routes = [
        Route("/", index),
        Route("/slide/{key}", slide_page),
        Route("/static/{name:path}", static_file),
        Route("/files/{name:path}", own_file),
        Route("/api/slides", api_slides),
        Route("/api/slides/{key}", api_slide),
        Route("/api/slides/{key}/patches", api_patches),
        Route("/dzi/{key}.dzi", slide_dzi),
        Route("/dzi/{key}_files/{level:int}/{col:int}_{row:int}.jpeg", slide_tile),
        Route("/layers/{key}/{layer}.dzi", layer_dzi),
        Route("/layers/{key}/{layer}_files/{level:int}/{col:int}_{row:int}.png", layer_tile),
    ]
    app = Starlette(routes=routes, exception_handlers={KeyError: missing})
    app.state.viewer = viewer
    return Guard(app, token=token, allowed_hosts=allowed_hosts)


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Guard:
    """ASGI middleware: read-only methods, loopback Host names, the access token, and
    security headers on every response."""

    def __init__(self, app: Starlette, *, token: str | None,
                 allowed_hosts: tuple[str, ...] | None) -> None:
        self.app = app
        self.token = token
        self.allowed_hosts = allowed_hosts

    @property
    def viewer(self) -> Viewer:
        return self.app.state.viewer  # type: ignore[no-any-return]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if scope["method"] not in ("GET", "HEAD"):
            await _plain(405, "read-only: GET and HEAD only", {"Allow": "GET, HEAD"})(
                scope, receive, send)
            return
        if self.allowed_hosts is not None and _host_name(headers.get("host", "")) not in \
                self.allowed_hosts:
            await _plain(403, "unexpected Host header")(scope, receive, send)
            return
        if self.token is not None:
            name = TOKEN_COOKIE.format(port=(scope.get("server") or ("", 0))[1])
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            given = query.get("token")
            if given is not None and _same(given, self.token):
                # Set the cookie and drop the token from the address bar.
                rest = urlencode([(k, v) for k, v in query.items() if k != "token"])
                target = quote(scope["path"]) + (f"?{rest}" if rest else "")
                cookie = f"{name}={self.token}; HttpOnly; SameSite=Strict; Path=/"
                await _plain(303, "", {"Location": target, "Set-Cookie": cookie})(
                    scope, receive, send)
                return
            cookies = SimpleCookie()
            try:
                cookies.load(headers.get("cookie", ""))
            except Exception:  # a malformed cookie header is no token
                cookies = SimpleCookie()
            held = cookies.get(name)
            if held is None or not _same(held.value, self.token):
                await _plain(403, "this viewer needs its access token: open the URL with "
                             "?token=... that `fivewsi view` printed")(scope, receive, send)
                return

        async def send_secure(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"),
                         (b"referrer-policy", b"no-referrer"),
                         (b"x-frame-options", b"DENY")]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_secure)


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


def _host_name(host: str) -> str:
    """The name of a Host header without its port (``[::1]:8000`` → ``::1``)."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _plain(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(text, status_code=status, headers=headers)


def _not_found() -> Response:
    return PlainTextResponse("not found", status_code=404)


def _json(data: Any) -> Response:
    body = json.dumps(data, allow_nan=False, separators=(",", ":"))
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _links(catalog: Catalog, names: list[str]) -> dict[str, str]:
    return {name: f"/files/{quote(name)}" for name in names if name in catalog.files}


def _stops() -> list[str]:
    from fivewsi.predict.heatmaps import colormap_stops
    from fivewsi.view.tiles import COLORMAP

    return colormap_stops(COLORMAP, 9)
