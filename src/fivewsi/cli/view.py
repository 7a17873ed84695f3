"""``fivewsi view DIR``: a local web viewer of a ``predict`` (or ``evaluate``) output folder
(:mod:`fivewsi.view`).

Binds 127.0.0.1 by default; another ``--host`` needs an access token, printed with the URL
(as Jupyter does). Exit status 2 when DIR cannot be shown.
"""

from __future__ import annotations

import logging
import secrets
import webbrowser
from pathlib import Path
from typing import Annotated

import typer

from fivewsi.cli import options as o
from fivewsi.errors import FivewsiError

log = logging.getLogger("fivewsi")
app = typer.Typer()


class ViewSetupError(FivewsiError, RuntimeError):
    """The viewer cannot start: its assets are not built, or the address is taken."""


@app.command("view")
def view_command(
    folder: Annotated[Path, typer.Argument(
        help="A `fivewsi predict` output folder (or an `evaluate` one).")],
    host: Annotated[str, typer.Option(
        help="Address to bind; anything but loopback requires the printed access token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port).", min=0, max=65535)] = 8000,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the page in a browser.")
                            ] = False,
    verbose: o.Verbose = 0,
    quiet: o.Quiet = False,
) -> None:
    """Browse slides, predictions and per-question heatmap layers in a local web page."""
    from fivewsi.utils.logs import console
    from fivewsi.view.serve import Server
    from fivewsi.view.server import assets_missing, create_app, is_loopback

    o.setup_logging(verbose, quiet)
    if assets_missing():
        raise ViewSetupError("the viewer's OpenSeadragon files are not built into this source "
                             "checkout: run `make assets` (needs npm) first")
    loopback = is_loopback(host)
    token = None if loopback else secrets.token_urlsafe(24)
    app_ = create_app(folder, token=token, allowed_hosts=("localhost", "127.0.0.1", "::1")
                      if loopback else None)
    try:
        server = Server(app_, host=host, port=port)
        server.start()
    except OSError as exc:
        raise ViewSetupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    url = server.url + (f"/?token={token}" if token else "/")
    n = len(app_.viewer.catalog.slides)
    console.print(f"fivewsi view: {n} slide(s) of {folder} at [bold]{url}[/bold] "
                  "(Ctrl-C stops)", highlight=False, soft_wrap=True)
    if open_browser:
        webbrowser.open(url)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
