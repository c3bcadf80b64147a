"""The HTML report helpers: the page opens from disk and every image it names exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from dalle_zero.evaluation.report import (
    FigureRow,
    GridItem,
    HtmlReport,
    format_value,
    plot_curves,
    save_image_grid,
)
from tests.factories.shapes import shape_batch


def _metrics(path: Path, n: int = 20, scale: float = 1.0) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    rows = [{"step": s, "time": 0.0, "loss": scale / s, "lr": 1e-3} for s in range(1, n + 1)]
    rows.append({"step": n, "time": 0.0, "val/validation/tone_acc": 0.9})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _linked_files(html_text: str, folder: Path) -> list[Path]:
    return [folder / src for src in re.findall(r'src="([^"]+)"', html_text)]


def test_report_writes_html_whose_images_all_exist_relative_to_it(tmp_path):
    out = tmp_path / "report"
    grid = save_image_grid(shape_batch(10), out / "img" / "grid.png", nrow=5, scale=2)
    cells = [save_image_grid(shape_batch(1, seed=i), out / "img" / f"s{i}.png", scale=4) for i in range(3)]
    curve = plot_curves(
        {"dvae": _metrics(tmp_path / "run_a"), "prior": _metrics(tmp_path / "run_b", scale=2)},
        ["loss", "lr"],
        out / "curves.png",
        title="training",
    )
    report = HtmlReport("dalle-zero <eval>", out)
    report.section("Figures", "In-house figures, not comparable to published FID.")
    report.figure_table(
        [
            FigureRow(
                "in-house FID (unseen compositions)",
                12.3456,
                "torchmetrics FID with our evaluator's features.",
            ),
            FigureRow(
                "tone read as asked", 0.82, "share of samples the evaluator reads as the asked tone.", "%"
            ),
            FigureRow("IS", None, "not computed: too few samples."),
        ]
    )
    report.section("Samples").grid(
        [GridItem(p, f"caption {i} & <b>", score=0.3 + i) for i, p in enumerate(cells)]
    )
    report.image(grid, "originals")
    report.image(curve, "loss per stage")
    path = report.save()
    text = path.read_text()
    assert path == out / "report.html" and text.startswith("<!DOCTYPE html>")
    files = _linked_files(text, out)
    assert len(files) == 5 and all(f.is_file() for f in files)
    assert all(not Path(src).is_absolute() for src in re.findall(r'src="([^"]+)"', text))  # portable folder
    assert "dalle-zero &lt;eval&gt;" in text and "caption 0 &amp; &lt;b&gt;" in text  # user text is escaped
    assert "12.35" in text and "—" in text and "how obtained" in text


def test_embedded_report_needs_no_other_files(tmp_path):
    png = save_image_grid(shape_batch(2), tmp_path / "elsewhere" / "g.png")
    report = HtmlReport("embedded", tmp_path / "out", embed=True).image(png, "grid")
    text = report.save().read_text()
    assert 'src="data:image/png;base64,' in text


def test_images_outside_the_report_folder_are_refused_unless_embedded(tmp_path):
    png = save_image_grid(shape_batch(2), tmp_path / "elsewhere" / "g.png")
    with pytest.raises(ValueError, match="not under the report folder"):
        HtmlReport("r", tmp_path / "out").image(png)


def test_saving_a_report_that_names_a_missing_image_fails(tmp_path):
    report = HtmlReport("r", tmp_path).image("missing.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        report.save()


def test_image_grid_has_the_expected_size():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = save_image_grid(
            torch.zeros(5, 3, 8, 8, dtype=torch.uint8), Path(d) / "g.png", nrow=3, pad=1, scale=2
        )
        with Image.open(path) as im:
            assert im.size == ((3 * 9 + 1) * 2, (2 * 9 + 1) * 2)


def test_plot_curves_reads_run_folders_and_files_and_rejects_unknown_keys(tmp_path):
    run = _metrics(tmp_path / "run")
    png = plot_curves(
        {"run": run / "metrics.jsonl"}, ["val/validation/tone_acc"], tmp_path / "acc.png", smooth=3
    )
    with Image.open(png) as im:
        assert im.size[0] > 100
    with pytest.raises(ValueError, match="no run logs"):
        plot_curves({"run": run}, ["los"], tmp_path / "x.png")


def test_format_value():
    assert format_value(0.123456) == "0.1235"
    assert format_value(12000) == "12,000"
    assert format_value(float("nan")) == "—"
    assert format_value(float("inf"), "dB") == "∞ dB"
