"""Pictures, the HTML report and ``evaluate --explanations`` through the CLI."""

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import infodisent
from infodisent.cli import main
from infodisent.viz import plots


@pytest.fixture(scope="module")
def run_copy(tiny_run, tmp_path_factory):
    _, _, cfg = tiny_run
    dst = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(cfg.out, dst)
    return dst, cfg


def test_overlay_and_boxes():
    img = Image.new("RGB", (64, 64), (10, 20, 30))
    heat = np.zeros((64, 64))
    heat[40:50, 5:15] = 1.0
    out = np.asarray(plots.overlay(img, heat))
    assert out.shape == (64, 64, 3)
    assert (out[:30] == (10, 20, 30)).all()  # zero heat leaves pixels alone
    assert not (out[45, 10] == (10, 20, 30)).all()
    lut = plots.colormap()
    assert lut.shape == (256, 3) and lut.dtype == np.uint8 and (lut[-1] != lut[0]).any()
    boxed = np.asarray(plots.draw_box(img, (8, 8, 24, 24), width=1))
    assert tuple(boxed[8, 16]) == plots.BOX_COLOR and tuple(boxed[16, 16]) == (10, 20, 30)


def test_contribution_bars_add_up_to_the_logit(run_copy):
    run, _ = run_copy
    e = infodisent.open_run(run).explain(2)
    fig = plots.contributions_figure(e, n=5)
    bars = fig.data[0]
    assert sum(bars.x) == pytest.approx(e.logit, rel=1e-6, abs=1e-9)
    assert len(bars.x) <= 11 and bars.y[5].endswith(" others")
    shown = [int(y.split()[1]) for y in bars.y if y.startswith("ch ")]
    assert f"the {len(shown)} channels shown carry {100 * e.coverage(shown).share:.1f}% of the evidence" \
        in fig.layout.title.text
    vs = plots.versus_figure(e, (e.target + 1) % 6, n=4)
    assert len(vs.data[0].x) == 8 and "of the difference" in vs.layout.title.text


def test_report_is_self_contained(run_copy):
    run, cfg = run_copy
    before = json.loads((run / "metrics.json").read_text())
    assert main(["evaluate", str(run), "--explanations", "--quiet", "--num-workers", "0"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    ex = m.pop("explanations")
    assert m == {k: v for k, v in before.items() if k != "explanations"}  # training's part is kept
    assert set(ex) >= {"accuracy", "size", "faithfulness", "parts", "split", "num_images"}
    assert set(ex["size"]) >= {"global_size", "local_size", "channels_for_mass", "above_relative", "top_share"}
    assert set(ex["parts"]) >= {"purity", "pointing_game", "pointing_game_chance"}
    saved = infodisent.open_run(run).metrics.explanations
    assert saved.faithfulness.area_logit == ex["faithfulness"]["area_logit"] and saved.size.mass == 0.9
    assert (run / "prototypes" / "test" / "meta.json").is_file()
    assert main(["report", str(run), "--samples", "2", "--max-classes", "3", "--channels", "2", "--quiet"]) == 0
    html = (run / "report.html").read_text()
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    scripts = re.findall(r"<script([^>]*)>", html)
    assert scripts and not any("src=" in attrs for attrs in scripts)  # plotly.js inline, nothing fetched
    assert html.count("Plotly.newPlot") == 3  # faithfulness + 2 samples
    assert len(re.findall(r'<img src="data:image/jpeg;base64,', html)) == 2 + 3 * 2
    assert "Explanation metrics" in html and "test image" in html
    assert "size.local_size" in html and "accuracy.loss" not in html and "cub_parts" not in html  # no empty rows
    assert (run / "prototypes" / "train" / "meta.json").is_file()  # mined for the galleries


def test_report_needs_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--quiet"]) == 2
    assert "not an InfoDisent run directory" in capsys.readouterr().err
