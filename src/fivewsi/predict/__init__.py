"""What ``fivewsi predict`` writes besides the prediction table.

- :mod:`fivewsi.predict.heatmaps`: patch scores painted over the slide thumbnail (PNG).
- :mod:`fivewsi.predict.geojson`: patch scores as GeoJSON tiles that QuPath imports.
- :mod:`fivewsi.predict.html`: one self-contained, offline ``report.html`` for a whole run.

The submodules are imported on demand so that ``import fivewsi.predict`` stays cheap.
"""
