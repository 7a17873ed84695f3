"""`fivewsi view DIR`: routes and JSON (TestClient), a real uvicorn server on loopback for path
traversal and the host/token rules, the command line, and the pages in Debian's Chromium."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from starlette.testclient import TestClient

from conftest import make_slides_and_run, shared_slide
from fivewsi.predict.predict import PredictConfig, predict
from fivewsi.view.catalog import ViewInputError, load_catalog
from fivewsi.view.serve import Server
from fivewsi.view.server import assets_missing, create_app
from fivewsi.view.tiles import score_colours

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A predict output: s0 from its slide (deep zoom), s1 from a feature file (patch canvas),
    a broken slide (failed), with an id that needs escaping in HTML."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("view")
    slides, work, run = make_slides_and_run(root, epochs=1)
    # an evaluation whose figures report.html and the viewer show: only the listed PNG
    from fivewsi.predict.heatmaps import save_png

    evaluation = root / "eval"
    evaluation.mkdir()
    save_png(evaluation / "roc.png", np.full((40, 60, 3), 200, np.uint8))
    save_png(evaluation / "unlisted.png", np.zeros((4, 4, 3), np.uint8))
    (evaluation / "metrics.json").write_text(json.dumps({"figures": [
        {"file": "roc.png", "title": "ROC <i>curves</i>"}]}))
    inputs = root / "inputs"
    inputs.mkdir()
    broken = inputs / "<b>broken&amp;.tif"
    broken.write_bytes(b"II*\x00 this is not a slide")
    result = predict(PredictConfig(run=run, out=root / "out", workers=0, progress=False,
                                   inputs=[slides / "s0.tif", work / "features" / "s1.h5",
                                           broken], evaluation=evaluation))
    assert {o.slide_id: o.status for o in result.outcomes} == {
        "s0": "ok", "s1": "ok", "<b>broken&amp;": "failed"}
    # a secret beside DIR, and a symlink to it inside DIR: never served
    (root / "secret.json").write_text('{"secret": 1}')
    os.symlink(root / "secret.json", root / "out" / "leak.json")
    return {"out": root / "out", "run": run}


@pytest.fixture(scope="module")
def out(made: dict[str, Path]) -> Path:
    return made["out"]


@pytest.fixture(scope="module")
def client(out: Path) -> TestClient:
    return TestClient(create_app(out), base_url="http://127.0.0.1")


def test_api_slides_lists_every_slide(client: TestClient) -> None:
    data = client.get("/api/slides").json()
    assert data["kind"] == "predict" and data["classes"] == ["LUAD", "LUSC"]
    assert data["calibrated"] and data["calibration"].startswith("calibrated")
    slides = {s["slide_id"]: s for s in data["slides"]}
    assert set(slides) == {"s0", "s1", "<b>broken&amp;"}
    assert slides["<b>broken&amp;"]["status"] == "failed" and slides["<b>broken&amp;"]["error"]
    s0 = slides["s0"]
    assert s0["predicted"] in ("LUAD", "LUSC")
    assert abs(sum(s0["probabilities"].values()) - 1) < 1e-3
    questions = {a["question"]: a for a in s0["attributes"]}
    assert questions["vascular_invasion"]["answer"] in ("present", "absent")
    assert 0 <= questions["vascular_invasion"]["probability"] <= 1
    assert "report.html" in data["files"]


def test_the_run_evaluation_figures_are_served_alone(client: TestClient) -> None:
    data = client.get("/api/slides").json()
    assert data["figures"] == [{"title": "ROC <i>curves</i>", "href": "/files/evaluation/roc.png"}]
    figure = client.get("/files/evaluation/roc.png")
    assert figure.status_code == 200 and figure.headers["content-type"] == "image/png"
    assert figure.content[:8] == b"\x89PNG\r\n\x1a\n"
    for other in ("unlisted.png", "metrics.json", "../secret.json", "%2e%2e/secret.json"):
        assert client.get(f"/files/evaluation/{other}").status_code == 404, other


def test_api_slide_with_image_and_layers(client: TestClient) -> None:
    info = client.get("/api/slides/s0").json()
    assert info["image"] and (info["width"], info["height"]) == (1536, 1024)
    assert info["dzi"] == "/dzi/s0.dzi" and info["patch_size"] > 0
    names = [layer["name"] for layer in info["layers"]]
    assert names[0].startswith("class ") and "vascular_invasion" in names
    for layer in info["layers"]:
        assert layer["min"] <= layer["max"] and isinstance(layer["near_uniform"], bool)
        assert layer["label"]  # attention weights: their range in absolute terms
    assert set(info["overlays"]) == {"outline", "grid"}
    assert info["links"]["geojson"] == "/files/geojson/s0.geojson"
    assert client.get(info["links"]["geojson"]).json()["type"] == "FeatureCollection"
    assert info["links"]["report"] == "/files/report.html"
    dzi = client.get("/dzi/s0.dzi")
    assert dzi.status_code == 200 and 'Width="1536"' in dzi.text
    tile = client.get("/dzi/s0_files/11/0_0.jpeg")
    assert tile.status_code == 200 and tile.content[:2] == b"\xff\xd8"
    assert client.get("/dzi/s0_files/11/99_0.jpeg").status_code == 404
    assert client.get("/dzi/s0_files/99/0_0.jpeg").status_code == 404


def test_layer_tiles_follow_the_patch_scores(client: TestClient) -> None:
    import cv2

    info = client.get("/api/slides/s0").json()
    patches = client.get("/api/slides/s0/patches").json()
    assert len(patches["coords"]) == info["n_patches"] == len(patches["scores"])
    assert patches["layers"] == [layer["name"] for layer in info["layers"]]
    question = next(layer for layer in info["layers"] if layer["name"] == "vascular_invasion")
    xml = client.get(question["dzi"]).text
    assert 'Width="1536"' in xml and 'Height="1024"' in xml  # the slide's geometry
    level = 8  # 11 = ceil(log2(1536)) is full resolution: level 8 is 1/8, one 192x128 tile
    images = {}
    for layer in ("0", question["id"], "outline", "grid"):
        response = client.get(f"/layers/s0/{layer}_files/{level}/0_0.png")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        bgra = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_UNCHANGED)
        images[layer] = cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGBA)
    assert images["0"].shape == (128, 192, 4)
    coords, size = np.array(patches["coords"]), patches["size"]
    scores = np.array(patches["scores"], dtype=float)
    for layer in ("0", question["id"]):
        lut = score_colours(scores[:, int(layer)])
        centres = ((coords + size / 2) / 8).astype(int)
        # every patch is painted in its own score's colour, by rank as predict's heatmaps
        painted = images[layer][centres[:, 1], centres[:, 0]]
        assert np.array_equal(painted, lut[: len(coords)])
    covered = np.zeros((128, 192), bool)
    for x, y in coords // 8:
        covered[y : y + size // 8, x : x + size // 8] = True
    assert not images["0"][~covered][:, 3].any()  # transparent where no patch lies
    assert not np.array_equal(images["0"], images[question["id"]])  # two maps, two pictures
    # the tissue outline is fivewsi's tissue detection on the slide, the grid the patches'
    outline, grid = images["outline"][:, :, 3] > 0, images["grid"][:, :, 3] > 0
    assert outline.any() and (outline & covered).any()
    assert grid.any() and not (grid & ~covered).any()
    assert images["outline"][outline][:, :3].tolist() == [[0, 200, 80]] * int(outline.sum())
    assert client.get(f"/layers/s0/{len(info['layers'])}.dzi").status_code == 404
    assert client.get("/layers/s0/x.dzi").status_code == 404
    assert client.get(f"/layers/s0/0_files/{level}/1_0.png").status_code == 404


def test_feature_file_slide_is_a_patch_canvas(client: TestClient) -> None:
    info = client.get("/api/slides/s1").json()
    assert not info["image"] and info["dzi"] == "/layers/s1/canvas.dzi"
    assert client.get("/dzi/s1.dzi").status_code == 404
    assert client.get("/layers/s1/canvas_files/0/0_0.png").status_code == 200
    # without the image, the outline is the patches': inside the area they cover
    import cv2

    def tile(layer: str) -> np.ndarray:
        data = client.get(f"/layers/s1/{layer}_files/8/0_0.png").content
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)

    canvas, outline = tile("canvas"), tile("outline")
    covered = (canvas[:, :, :3] == 225).all(axis=2)  # CANVAS_RGBA where a patch lies
    assert covered.any() and (outline[:, :, 3] > 0).any()
    assert not ((outline[:, :, 3] > 0) & ~covered).any()
    failed = client.get("/api/slides/_b_broken%26amp%3B").json()
    assert failed["status"] == "failed" and failed["dzi"] is None and failed["layers"] == []


def test_pages_and_static_files(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers[
        "content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert client.get("/slide/s0").status_code == 200
    assert client.get("/slide/nope").status_code == 404
    assert client.get("/static/slide.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/nope.js").status_code == 404
    report = client.get("/files/report.html")
    assert report.status_code == 200 and "default-src 'none'" in report.headers[
        "content-security-policy"]
    heatmap = client.get("/api/slides/s0").json()["links"]["heatmaps"]["vascular_invasion.png"]
    assert client.get(heatmap).content[:4] == b"\x89PNG"


@pytest.mark.shared
def test_a_real_svs_slide_deep_zooms(made: dict[str, Path], tmp_path: Path) -> None:
    import openslide

    slide = shared_slide("cmu-1-small-region.svs")
    result = predict(PredictConfig(run=made["run"], inputs=[slide], out=tmp_path / "out",
                                   workers=0, progress=False))
    assert result.outcomes[0].status == "ok", result.outcomes[0].error
    client = TestClient(create_app(tmp_path / "out"), base_url="http://127.0.0.1")
    key = client.get("/api/slides").json()["slides"][0]["key"]
    info = client.get(f"/api/slides/{key}").json()
    with openslide.OpenSlide(str(slide)) as real:
        assert info["image"] and (info["width"], info["height"]) == real.dimensions
        assert info["mpp"] == pytest.approx(float(real.properties["openslide.mpp-x"]), abs=1e-3)
    top = max(1, int(np.ceil(np.log2(max(info["width"], info["height"])))))
    tile = client.get(f"/dzi/{key}_files/{top}/1_1.jpeg")
    assert tile.status_code == 200 and tile.content[:2] == b"\xff\xd8"
    layer = info["layers"][1]
    assert f'Width="{info["width"]}"' in client.get(layer["dzi"]).text
    assert client.get(f"/layers/{key}/{layer['id']}_files/{top - 3}/0_0.png").status_code == 200
    assert client.get(f"/layers/{key}/outline_files/{top - 3}/0_0.png").status_code == 200


def test_catalog_refuses_what_is_not_an_output(tmp_path: Path) -> None:
    with pytest.raises(ViewInputError, match="not a folder"):
        load_catalog(tmp_path / "nope")
    with pytest.raises(ViewInputError, match=r"no predictions\.csv"):
        load_catalog(tmp_path)
    (tmp_path / "predictions.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ViewInputError, match="no slide_id"):
        load_catalog(tmp_path)


def test_evaluate_output_is_shown(tmp_path: Path) -> None:
    (tmp_path / "predictions.csv").write_text(
        "slide_id,label,predicted,p_A,p_B,error\nt1,A,B,0.3,0.7,\nt2,B,,,,missing file\n")
    (tmp_path / "metrics.json").write_text(json.dumps({"figures": [
        {"file": "reliability.png", "title": "Reliability"},
        {"file": "sub/roc.png", "title": "not directly in DIR"}]}))
    from fivewsi.predict.heatmaps import save_png

    save_png(tmp_path / "reliability.png", np.zeros((4, 4, 3), np.uint8))
    save_png(tmp_path / "sub" / "roc.png", np.zeros((4, 4, 3), np.uint8))
    save_png(tmp_path / "unlisted.png", np.zeros((4, 4, 3), np.uint8))
    client = TestClient(create_app(tmp_path), base_url="http://localhost")
    data = client.get("/api/slides").json()
    # the figures metrics.json lists, directly in DIR
    assert data["figures"] == [{"title": "Reliability", "href": "/files/reliability.png"}]
    assert client.get(data["figures"][0]["href"]).content[:4] == b"\x89PNG"
    assert data["kind"] == "evaluate" and data["files"] == {"metrics.json": "/files/metrics.json",
                                                            "predictions.csv":
                                                                "/files/predictions.csv"}
    by_id = {s["slide_id"]: s for s in data["slides"]}
    assert by_id["t1"]["label"] == "A" and by_id["t2"]["status"] == "failed"


# --- a real server on loopback: traversal, methods, hosts, tokens ----------------------------


@pytest.fixture(scope="module")
def server(out: Path):
    running = Server(create_app(out), port=0).start()
    yield running
    running.stop()


def _raw(server: Server, path: str, method: str = "GET", host: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    """One request with ``path`` sent exactly as given (no client-side normalisation)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{server.port}'}",
                 "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        body = response.read()
        return response.status, body, {k.lower(): v for k, v in response.getheaders()}


@pytest.mark.parametrize("path", [
    "/files/../predictions.csv",
    "/files/../../secret.json",
    "/files/%2e%2e/secret.json",
    "/files/%2e%2e%2fsecret.json",
    "/files/..%2f..%2fsecret.json",
    "/files/%2E%2E/%2E%2E/etc/passwd",
    "/files//etc/passwd",
    "/files/%2fetc%2fpasswd",
    "/static/../catalog.py",
    "/static/%2e%2e/server.py",
    "/static/..%2fserver.py",
    "/static//etc/passwd",
    "/files/leak.json",
    "/files/features/s0.h5",
    "/files/manifest.csv/../../secret.json",
    "/files/evaluation/../secret.json",
    "/files/evaluation/%2e%2e/secret.json",
    "/files/evaluation/unlisted.png",
    "/files/evaluation/metrics.json",
    "/dzi/..%2f..%2fsecret.dzi",
    "/slide/..%2f..%2fetc%2fpasswd",
    "/etc/passwd",
    "//etc/passwd",
])
def test_no_path_outside_the_allow_list(server: Server, out: Path, path: str) -> None:
    status, body, _ = _raw(server, path)
    assert status in (400, 404), (path, status)
    assert b"secret" not in body and b"root:" not in body and b"import" not in body


def test_the_allow_list_is_served(server: Server) -> None:
    status, body, _ = _raw(server, "/files/predictions.csv")
    assert status == 200 and body.startswith(b"slide_id,status")
    status, _, _ = _raw(server, "/files/geojson/s0.geojson")
    assert status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_read_only(server: Server, method: str) -> None:
    status, _, headers = _raw(server, "/api/slides", method=method)
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_head_has_no_body(server: Server) -> None:
    status, body, headers = _raw(server, "/api/slides", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.evil.example"])
def test_loopback_server_refuses_other_host_names(server: Server, host: str) -> None:
    # DNS rebinding: a page of another site must not read the viewer through its own name
    assert _raw(server, "/api/slides", host=host)[0] == 403
    assert _raw(server, "/api/slides", host="localhost:1234")[0] == 200
    assert _raw(server, "/api/slides", host="[::1]:80")[0] == 200


def test_token_is_required_and_set_as_a_cookie(out: Path) -> None:
    token = "s3cret-token_value"
    running = Server(create_app(out, token=token, allowed_hosts=None), port=0).start()
    name = f"fivewsi_view_token_{running.port}"
    try:
        assert _raw(running, "/api/slides")[0] == 403
        assert _raw(running, "/api/slides?token=wrong")[0] == 403
        assert _raw(running, "/", headers={"Cookie": f"{name}=wrong"})[0] == 403
        status, _, headers = _raw(running, "/slide/s0?token=" + token)
        assert status == 303 and headers["location"] == "/slide/s0"
        cookie = headers["set-cookie"]
        assert f"{name}={token}" in cookie and "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        status, body, _ = _raw(running, "/api/slides",
                               headers={"Cookie": f"{name}={token}"})
        assert status == 200 and b"s0" in body
        assert _raw(running, "/api/slides", host="any.name",
                    headers={"Cookie": f"{name}={token}"})[0] == 200
        assert _raw(running, "/api/slides", method="POST",
                    headers={"Cookie": f"{name}={token}"})[0] == 405
    finally:
        running.stop()


def test_eight_clients_at_once_all_answered(server: Server) -> None:
    """The load the benchmark times (benchmarks/bench_view.py), here untimed: 8 clients on
    loopback, each 30 requests of slide tiles, layer tiles, the API and files, all answered."""
    import concurrent.futures
    import random

    import httpx

    info = httpx.get(f"{server.url}/api/slides/s0").json()
    width, height, top = info["width"], info["height"], 11  # 1536 x 1024: ceil(log2) = 11
    layers = [layer["id"] for layer in info["layers"]] + ["outline", "grid"]

    def tile(rng: random.Random, side: int) -> tuple[int, int, int]:
        level = rng.randint(top - 3, top)
        scale = 2 ** (top - level)
        cols, rows = -(-width // scale // side), -(-height // scale // side)
        return level, rng.randrange(max(cols, 1)), rng.randrange(max(rows, 1))

    def client(seed: int) -> list[tuple[str, int, str, bytes]]:
        rng = random.Random(seed)
        answers = []
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for _ in range(30):
                kind = rng.choice(["slide", "layer", "api", "file"])
                if kind == "slide":
                    path = "/dzi/s0_files/{}/{}_{}.jpeg".format(*tile(rng, 254))
                elif kind == "layer":
                    path = "/layers/s0/{}_files/{}/{}_{}.png".format(rng.choice(layers),
                                                                     *tile(rng, 256))
                elif kind == "api":
                    path = rng.choice(["/api/slides", "/api/slides/s0", "/api/slides/s1/patches"])
                else:
                    path = rng.choice(["/files/evaluation/roc.png", "/static/index.js"])
                response = http.get(path)
                answers.append((path, response.status_code,
                                response.headers.get("content-type", ""), response.content))
        return answers

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = [a for some in pool.map(client, range(8)) for a in some]
    assert len(answers) == 240
    expected = {".jpeg": ("image/jpeg", b"\xff\xd8"), ".png": ("image/png", b"\x89PNG"),
                ".js": ("text/javascript", b"//")}
    for path, status, kind, body in answers:
        assert status == 200, (path, status)
        suffix = Path(path).suffix
        want, magic = expected.get(suffix, ("application/json", b"{"))
        assert kind.startswith(want) and body.startswith(magic), (path, kind, body[:8])


def test_the_server_socket_is_tcp_so_responses_are_not_delayed() -> None:
    # asyncio sets TCP_NODELAY only on sockets whose proto is TCP; without it a response's
    # head and body wait ~40 ms for a delayed ACK (benchmarks/bench_view.py)
    from starlette.applications import Starlette

    running = Server(Starlette(), port=0)
    try:
        assert running.socket.proto == socket.IPPROTO_TCP
    finally:
        running.socket.close()


# --- the command line ------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "300"}
    return subprocess.Popen([sys.executable, "-m", "fivewsi", "view", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_cli_bad_folder_is_one_line_exit_2(tmp_path: Path) -> None:
    done = _cli(str(tmp_path / "nope"))
    output, _ = done.communicate(timeout=60)
    assert done.returncode == 2, output
    assert output.strip().count("\n") == 0 and output.startswith("error:")


@pytest.mark.skipif(assets_missing(), reason="OpenSeadragon not built: run `make assets`")
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_cli_serves_and_prints_its_url(out: Path, host: str) -> None:
    import re
    import urllib.request

    process = _cli(str(out), "--port", "0", "--host", host)
    try:
        assert process.stdout is not None
        lines = []
        found = None
        while found is None and len(lines) < 10:  # warnings (a skipped figure) may come first
            lines.append(process.stdout.readline())
            found = re.search(r"http://\S+:(\d+)/(\?token=(\S+))?", lines[-1])
        line = lines[-1]
        assert found, lines
        port, token = found.group(1), found.group(3)
        assert (token is None) == (host == "127.0.0.1"), line
        url = f"http://127.0.0.1:{port}/api/slides"
        if token is None:
            with urllib.request.urlopen(url, timeout=10) as response:
                assert json.loads(response.read())["kind"] == "predict"
        else:
            with pytest.raises(urllib.error.HTTPError, match="403"):
                urllib.request.urlopen(url, timeout=10)
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
            with opener.open(f"{url}?token={token}", timeout=10) as response:
                assert json.loads(response.read())["kind"] == "predict"
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.skipif(assets_missing(), reason="OpenSeadragon not built: run `make assets`")
def test_cli_open_launches_the_browser(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import webbrowser

    from typer.testing import CliRunner

    from fivewsi.cli import app

    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", opened.append)
    monkeypatch.setattr(Server, "wait", lambda self: None)  # return at once, then stop
    done = CliRunner().invoke(app, ["view", str(out), "--port", "0", "--open"],
                              env={"COLUMNS": "300"})
    assert done.exit_code == 0, done.output
    assert len(opened) == 1 and opened[0].startswith("http://127.0.0.1:")
    assert opened[0] in done.output and "3 slide(s)" in done.output


def test_cli_port_in_use_is_one_line_exit_2(out: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if assets_missing():
            pytest.skip("OpenSeadragon not built: run `make assets`")
        done = _cli(str(out), "--port", str(taken.getsockname()[1]))
        output, _ = done.communicate(timeout=60)
    assert done.returncode == 2 and output.startswith("error: cannot listen"), output


# --- the pages in a real browser -------------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium (Debian package) on this machine")


@pytest.mark.slow
@pytest.mark.skipif(assets_missing(), reason="OpenSeadragon not built: run `make assets`")
def test_browser_index_slide_zoom_layer_and_patch(server: Server, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = _chromium()
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable,
                                     args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}")
                    if r.status >= 400 else None)
            page.goto(f"{server.url}/")
            page.wait_for_selector("tr[data-slide='s0']")
            # the failed slide is listed with its error; its id is text, not markup
            failed = page.locator("tr[data-slide='<b>broken&amp;']")
            assert failed.count() == 1 and "failed" in failed.inner_text()
            assert page.locator("b", has_text="broken").count() == 0
            # the run's evaluation figure, its title as text
            page.wait_for_function("() => document.querySelector('#figures img')?.naturalWidth"
                                   " === 60")
            assert page.inner_text("#figures figcaption") == "ROC <i>curves</i>"
            assert page.locator("#figures i").count() == 0
            page.fill("#filter", "s1")
            assert page.locator("tbody tr").count() == 1
            page.fill("#filter", "")
            page.click("th[data-key='slide_id']")  # sort descending
            first = page.locator("tbody tr").first.get_attribute("data-slide")
            assert first == "s1"

            page.click("a:text-is('s0')")
            page.wait_for_url("**/slide/s0")
            page.wait_for_function("() => window.fivewsi && window.fivewsi.idle()", timeout=30000)
            canvas = page.locator("#viewer .openseadragon-canvas canvas").first
            page.evaluate("() => window.fivewsi.viewer.viewport.zoomTo(3, null, true)")
            page.wait_for_function("() => window.fivewsi.idle()", timeout=30000)
            time.sleep(0.5)
            before = canvas.screenshot()
            page.check("input[data-layer='vascular_invasion']")
            page.wait_for_function("() => window.fivewsi.viewer.world.getItemCount() >= 3"
                                   " && window.fivewsi.idle()", timeout=30000)
            time.sleep(0.5)
            after = canvas.screenshot()
            assert _pixels_differ(before, after), "the question layer changed nothing"
            assert "vascular_invasion" in page.inner_text("#ranges")

            box = canvas.bounding_box()
            assert box is not None
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.wait_for_selector("#patch-scores")
            scores = page.inner_text("#patch-scores")
            assert "vascular_invasion (question attention)" in scores
            assert "(class contribution)" in scores
            assert "level-0 x" in page.inner_text("#patch-coords")
            assert "present" in page.inner_text("#attributes") or \
                "absent" in page.inner_text("#attributes")
            screenshot = os.environ.get("FIVEWSI_VIEW_SCREENSHOT")
            if screenshot:
                page.screenshot(path=screenshot)
        finally:
            browser.close()
    assert not errors, errors
    assert all(url.startswith(server.url) for url in requests), "a request left the server"


def _pixels_differ(a: bytes, b: bytes) -> bool:
    import cv2

    first = cv2.imdecode(np.frombuffer(a, np.uint8), cv2.IMREAD_COLOR).astype(int)
    second = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR).astype(int)
    return first.shape == second.shape and float(np.abs(first - second).mean()) > 1.0
