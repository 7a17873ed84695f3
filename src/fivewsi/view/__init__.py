"""``fivewsi view``: a local web viewer of predictions — deep-zoom slides with the class and
per-question heatmap layers, patch scores on click, and the run's figures.

:mod:`~fivewsi.view.catalog` reads DIR into the allow-list of what may be served,
:mod:`~fivewsi.view.tiles` draws deep-zoom tiles, :mod:`~fivewsi.view.server` is the starlette
app and its guard, :mod:`~fivewsi.view.serve` runs it on uvicorn. The client (``static/``) is
plain ES modules over OpenSeadragon, vendored from npm at build time (``make assets``).
"""
