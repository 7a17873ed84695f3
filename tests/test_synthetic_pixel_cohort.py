"""The pixel-level synthetic cohort: slides, reports, slide table, classes, tumour regions."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fivewsi.synthetic import CLASS_STYLES, tumour_regions, write_pixel_cohort


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_pixel_cohort_tables_slides_and_reports(tmp_path):
    from fivewsi.cohort.table import read_classes
    from fivewsi.reports.pipeline import extract_reports
    from fivewsi.reports.questions import load_question_set
    from fivewsi.reports.render import render_label
    from fivewsi.slides.readers import open_slide

    data = write_pixel_cohort(tmp_path, n_train=6, n_test=4, shots=2, seed=3, width=1024,
                              height=768, missing_report_every=3)
    slides = read_csv(data.slides_csv)
    assert [r["slide_id"] for r in slides] == [f"demo-{i:03d}" for i in range(10)]
    train = [r for r in slides if r["split"] == "train"]
    test = [r for r in slides if r["split"] == "test"]
    assert len(train) == 6 and len(test) == 4
    for cls in ("LUAD", "LUSC"):  # shots labelled per class; the rest known by report only
        assert sum(r["label"] == cls for r in train) == 2
        assert sum(r["label"] == cls for r in test) == 2
    assert sum(r["label"] == "" for r in train) == 2
    truth = {s.slide_id: s for s in data.slides}
    assert all(truth[r["slide_id"]].label == r["label"] for r in slides if r["label"])

    reports = read_csv(data.reports_csv)
    assert len(reports) == 8  # every 3rd training slide has no report
    assert {s.slide_id for s in data.slides if s.reported is None} == (
        {r["slide_id"] for r in slides} - {r["slide_id"] for r in reports}
    )
    # The offline extractor reads back exactly the fields each report states.
    extract_reports(data.reports_csv, tmp_path / "LABELS.csv", id_column="slide_id",
                    progress=False)
    qs = load_question_set("lung")
    for row in read_csv(tmp_path / "LABELS.csv"):
        assert row["status"] == "ok"
        assert row["fine_grained_label"] == render_label(truth[row["slide_id"]].reported, qs)

    classes = read_classes(data.classes_csv)
    assert [c.name for c in classes] == ["LUAD", "LUSC"] and all(c.description for c in classes)
    with open_slide(data.slides[0].path) as slide:
        assert slide.dimensions == (1024, 768) and slide.mpp == 0.5


def test_pixel_cohort_is_deterministic_and_reuses_slides(tmp_path):
    first = write_pixel_cohort(tmp_path / "a", n_train=4, n_test=2, shots=1, seed=1, width=512,
                               height=512)
    stamps = {s.path: s.path.stat().st_mtime_ns for s in first.slides}
    again = write_pixel_cohort(tmp_path / "a", n_train=4, n_test=2, shots=1, seed=1, width=512,
                               height=512)
    assert {s.path: s.path.stat().st_mtime_ns for s in again.slides} == stamps
    other = write_pixel_cohort(tmp_path / "b", n_train=4, n_test=2, shots=1, seed=1, width=512,
                               height=512)
    for name in ("slides.csv", "reports.csv", "classes.csv"):
        assert (first.root / name).read_bytes() == (other.root / name).read_bytes()
    assert first.slides[0].path.read_bytes() == other.slides[0].path.read_bytes()
    seeded = write_pixel_cohort(tmp_path / "c", n_train=4, n_test=2, shots=1, seed=2, width=512,
                                height=512)
    assert (seeded.root / "reports.csv").read_bytes() != (first.root / "reports.csv").read_bytes()


def test_tumour_regions_follow_class_differentiation_and_stas():
    rng = np.random.default_rng(0)
    moderate = {"differentiation": "moderate", "stas": "absent"}
    luad = tumour_regions("LUAD", moderate, rng, 3072, 2048)
    lusc = tumour_regions("LUSC", moderate, rng, 3072, 2048)
    assert len(luad) == len(lusc) == 1
    # LUSC: larger, darker nuclei, fewer of them, in eosin-rich stroma
    assert lusc[0].size > luad[0].size and lusc[0].darkness > luad[0].darkness
    assert lusc[0].density < luad[0].density and lusc[0].eosin > luad[0].eosin
    assert luad[0].size == CLASS_STYLES["LUAD"]["size"]
    poor = tumour_regions("LUAD", {"differentiation": "poor", "stas": "absent"}, rng, 3072, 2048)
    well = tumour_regions("LUAD", {"differentiation": "well", "stas": "absent"}, rng, 3072, 2048)
    assert poor[0].size > luad[0].size > well[0].size
    stas = tumour_regions("LUAD", {"differentiation": "well", "stas": "present"}, rng, 3072, 2048)
    main, satellites = stas[0], stas[1:]
    assert 3 <= len(satellites) <= 5
    for s in satellites:  # small foci outside the main tumour
        assert s.radius < main.radius / 4
        assert np.hypot(s.x - main.x, s.y - main.y) > main.radius
