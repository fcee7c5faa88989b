"""The widgets at the Python level: built on a small run, their controls set, their callbacks fired, and what
they show checked against the library's numbers. (tests/test_browser.py clicks them in a real JupyterLab.)"""

import io
import shutil
import time
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

import infodisent
from infodisent.explain.explanation import explain_channel, explain_class
from infodisent.run import save_head
from infodisent.widgets import ChannelBrowser, DecisionExplorer, TrainingPanel
from infodisent.widgets.common import StaticView


@pytest.fixture(scope="module")
def run(tiny_run):
    return infodisent.open_run(tiny_run[2].out)


def _card_images(browser, side):
    return [int(label.value.split("#")[1].split()[0]) for _, _, label, _ in browser.cards[side] if label.value]


# ----------------------------------------------------------------------------- ChannelBrowser


def test_the_browser_shows_a_channel_from_the_index(run):
    b = ChannelBrowser(run, n=4)
    index = run.index("train")
    d = b.channel.value
    assert d == int(run.model.W[0].argmax())  # the heaviest channel of class 0
    assert f"channel {d}" in b.header.value and b.messages.last == ""
    for side in ("pos", "neg"):
        assert _card_images(b, side) == list(index.prototypes(d, side)["image"][:4])
    classes = explain_channel(run.model, d).classes
    assert list(b.classes_fig.data[0].y) == [str(n) for n in classes["name"][:10]]
    assert len(b.hist_fig.data[0].x) == int(index.valid.sum())
    assert "parts in its top positive patches" in b.parts.value

    before = b.cards["pos"][0][1].value
    b.mode.value = "heatmap"
    assert b.cards["pos"][0][1].value != before  # the same patch, now as a heatmap overlay

    b.used_only.value = False
    b.next.click()
    assert b.channel.value == (d + 1) % b.num_channels and b.slider.value == b.channel.value
    assert f"channel {(d + 1) % b.num_channels}" in b.header.value
    b.prev.click()
    assert b.channel.value == d


def test_the_browser_picks_channels_by_class_image_and_ranking(run):
    b = ChannelBrowser(run)
    b.pick_class.value = 2
    want = explain_class(run.model, 2).channels["channel"].tolist()[:30]
    assert [v for _, v in b.choices.options] == want
    b.choices.value = want[1]
    assert b.channel.value == want[1]

    b.pick_by.value = "image"
    b.pick_image.value = 3
    v = np.asarray(run.index("train").v[3])
    assert b.choices.options[0][1] == int(np.argmax(np.abs(v)))

    b.pick_by.value = "ranking"
    b.pick_metric.value = "classes"
    counts = (run.model.W.numpy() > 1e-3).sum(0)
    assert counts[b.choices.options[0][1]] == counts.max()
    b.pick_metric.value = "purity"
    assert b.messages.last == "" and "purity" in b.choices.options[0][0]


def test_bad_input_in_the_browser_is_a_message_and_the_browser_goes_on(run):
    b = ChannelBrowser(run)
    b.show(10_000)
    assert "outside" in b.messages.last
    b.channel.value = 1
    assert b.messages.last == "" and "channel 1" in b.header.value


def test_a_run_without_or_with_a_stale_index_offers_to_mine_it(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy, ignore=shutil.ignore_patterns("prototypes"))
    b = ChannelBrowser(infodisent.open_run(copy))
    assert "no prototype index" in b.messages.last and b.mine_button.layout.display is None
    assert b.header.value == ""
    b.mine_button.click()
    assert b.index is not None and b.mine_button.layout.display == "none" and "mined" in b.messages.last
    assert b.channel.value == int(run.model.W[0].argmax())
    assert f"channel {b.channel.value}" in b.header.value and _card_images(b, "pos")

    r = infodisent.open_run(copy)
    head = r.model.head
    with __import__("torch").no_grad():
        head.classifier.parametrizations.weight.original.mul_(1.01)
    save_head(head, r.files.head)
    stale = ChannelBrowser(infodisent.open_run(copy))
    assert "stale" in stale.messages.last and stale.mine_button.layout.display is None


def test_explain_this_image_opens_the_decision_explorer(run):
    b = ChannelBrowser(run)
    d = b.channel.value
    first = _card_images(b, "pos")[0]
    b.cards["pos"][0][3].click()
    e = b.explorer
    assert isinstance(e, DecisionExplorer) and e.split == "train" and e.image_index.value == first
    assert e.expl.sources == (first,) and e.selected == d
    b.cards["pos"][1][3].click()
    assert b.explorer is e and e.image_index.value == _card_images(b, "pos")[1]


def test_the_browser_static_fallback(run):
    view = ChannelBrowser(run).static(channel=3)
    assert isinstance(view, StaticView) and set(view.figures) == {"classes", "values"}
    assert all(isinstance(i, Image.Image) for i in view.images.values())
    assert "channel 3" in view.title and "<img" in view.to_html()


# ----------------------------------------------------------------------------- DecisionExplorer


def test_the_explorer_takes_a_decision_apart(run):
    e = DecisionExplorer(run, 2)
    expl = run.explain(2)
    assert e.messages.last == "" and e.target.value == expl.predicted
    assert f"predicted {expl.predicted_name}" in e.prediction.value
    w = e.waterfall.data[0]
    assert sum(w.x[:-1]) == pytest.approx(expl.logit) and w.x[-1] == pytest.approx(expl.logit)
    assert [v for _, v in e.channel.options] == [int(c) for c in w.customdata if c >= 0]
    assert e.selected == e.channel.options[0][1]
    assert e.picture.value and all(img.value for img in e.cam_images.values())

    other_class = (expl.predicted + 1) % len(run.class_names)
    picture = e.cam_images["Grad-CAM"].value
    e.target.value = other_class
    t = expl.with_target(other_class)
    assert sum(e.waterfall.data[0].x[:-1]) == pytest.approx(t.logit)
    assert t.target_name in e.waterfall.layout.title.text
    assert e.cam_images["Grad-CAM"].value != picture

    e.other.value = expl.predicted
    vs = t.versus(expl.predicted).set_index("channel")
    e.target.value = (other_class + 1) % len(run.class_names)  # the comparison follows the explained class
    assert e.versus.layout.title.text.startswith(run.class_names[e.target.value])
    e.target.value = expl.predicted  # the same class twice: nothing to compare
    assert "pick a second class" in e.versus.layout.title.text
    e.target.value = other_class
    for c, a, b in e.versus.data[0].customdata:
        assert vs.at[int(c), "difference"] == pytest.approx(a - b)

    before = e.picture.value
    e.opacity.value = 0.1
    assert e.picture.value != before

    d = e.channel.options[-1][1]
    e.channel.value = d
    assert e.selected == d and f"channel {d}:" in e.evidence.value


def test_the_explorer_switches_channels_off_at_once(run):
    e = DecisionExplorer(run, 2)
    expl = run.explain(2)
    top = int(expl.positive.channel.iloc[0])
    e.channel.value = top
    assert e.switch.value is False and e.without.value == ""
    e.switch.value = True  # the button: the decision without the selected channel
    assert e.off == [top] and e.messages.last == ""
    w = expl.without([top])
    assert f"logit of {expl.target_name} {expl.logit:.2f} → {w.logit:.2f}" in e.without.value
    assert w.predicted_name in e.without.value
    other = next(v for _, v in e.channel.options if v != top)
    e.channel.value = other
    assert e.switch.value is False  # the button shows the selected channel's state
    e.toggle(other)
    both = expl.without([top, other])
    assert e.off == [top, other] and f"→ {both.logit:.2f}" in e.without.value
    e.load(3)  # the channels stay off for the next image
    assert f"channels {top}, {other} off" in e.without.value
    e.toggle(top, False)
    e.toggle(other, False)
    assert e.off == [] and e.without.value == ""
    e.toggle(10_000)
    assert "outside" in e.messages.last


def test_the_browser_lists_suspicious_channels(run):
    from infodisent.studies.shortcuts import suspicious_channels

    b = ChannelBrowser(run)
    assert "suspicious" in [v for _, v in b.pick_by.options]  # parts data: the masks say what is on a part
    b.pick_by.value = "suspicious"
    want = suspicious_channels(run).channel.tolist()[:30]
    assert [v for _, v in b.choices.options] == want and "on no part" in b.choices.options[0][0]
    b.choices.value = want[0]
    assert b.channel.value == want[0]


def test_point_and_ask_and_a_click_on_the_image(run):
    e = DecisionExplorer(run, 1)
    view = e.expl.view.size[0]
    e._on_click({"type": "click", "dataX": 10, "dataY": 300})  # displayed pixels: the view is scaled up
    x, y = 10 * view / 336, 300 * view / 336
    assert e.clicked == pytest.approx((x, y))
    here = e.expl.at(x, y)
    assert e.point_table["channel"].tolist() == here["channel"].tolist()
    assert f"{len(here)} channels peak here" in e.point.value
    e._on_click({"type": "click", "dataX": 336, "dataY": 336})  # the last pixel: the last cell, no error
    assert e.messages.last == "" and e.point_table["position"].iloc[0] == e.expl.grid[0] * e.expl.grid[1] - 1
    e.image_index.value = 2
    assert e.point_table is None and "click on the image" in e.point.value  # the old image's answer is gone


def test_out_of_range_numbers_are_messages_not_clamped(run):
    e = DecisionExplorer(run, 10_000)
    assert "outside the test split" in e.messages.last
    e.image_index.value = 3
    assert e.messages.last == "" and e.expl.sources == (3,)
    b = ChannelBrowser(run, channel=9999)
    assert "outside" in b.messages.last and b.channel.value == int(run.model.W[0].argmax())


def test_the_explorer_loads_images_by_index_class_and_upload(run, tmp_path):
    e = DecisionExplorer(run, 0)
    ds = run.dataset("test")
    e.of_class.value = 3
    assert ds.labels[e.image_index.value] == 3 and e.expl.label == 3

    e._uploaded({"new": ({"name": "notes.txt", "content": memoryview(b"not an image")},)})
    assert "notes.txt is not an image" in e.messages.last
    e.image_index.value = 1  # still usable
    assert e.messages.last == "" and e.expl.sources == (1,)

    buf = io.BytesIO()
    ds.load_image(4).save(buf, format="PNG")
    e._uploaded({"new": ({"name": "mine.png", "content": memoryview(buf.getvalue())},)})
    assert e.messages.last == "" and "mine.png" in e.source.value
    np.testing.assert_allclose(e.expl.logits, run.explain(4).logits, rtol=1e-4, atol=1e-4)


def test_the_explorer_static_fallback(run):
    view = DecisionExplorer(run, 0).static(target=1, other=2)
    assert set(view.figures) == {"waterfall", "versus"}
    assert "Grad-CAM" in next(iter(view.images)) and "evidence for" in view.notes[0]


# ----------------------------------------------------------------------------- TrainingPanel


def test_the_panel_trains_stops_resumes_and_opens_the_run(tiny_run, tmp_path):
    base = replace(tiny_run[2], out=str(tmp_path / "panel"), fit=replace(tiny_run[2].fit, epochs=500))
    p = TrainingPanel(base)
    p.head.value = "fixed"
    p.prune_k.value = 3
    cfg = p.config()
    assert cfg.sparse.channels_per_class == 3 and cfg.fit.epochs == 500 and cfg.parts == base.parts
    p.head.value = "dense"
    assert p.config().sparse is None

    p.start.click()
    deadline = time.time() + 120
    while (p.monitor is None or len(p.monitor.rows) < 2) and time.time() < deadline:
        time.sleep(0.02)
    p.stop.click()
    p.wait(120)
    assert isinstance(p.error, infodisent.TrainingStopped), p.messages.last
    done = len(p.monitor.rows)
    assert 2 <= done < 500 and p.resume.value and "resume" in p.status.value
    assert len(p.curves.data[0].x) == done
    assert (tmp_path / "panel" / "checkpoint.pt").is_file()

    p.epochs.value = done + 1
    p.start.click()
    p.wait(120)
    assert p.error is None and "done: test top-1" in p.status.value
    assert len(p.monitor.rows) == 1  # only the one epoch left
    p.open_browser.click()
    assert isinstance(p.opened.children[0], ChannelBrowser)
    p.open_explorer.click()
    assert isinstance(p.opened.children[0], DecisionExplorer)


def test_the_panel_says_loudly_when_the_compact_head_misses_its_budget(tiny_run, tmp_path, monkeypatch):
    from infodisent.records.options import SparseOptions
    from infodisent.train import selection

    # the held-out images "show" a 30-point loss with a 1-point standard error: measurably outside the budget
    monkeypatch.setattr(selection, "paired_loss", lambda dense, compact: (0.30, 0.01))
    base = replace(tiny_run[2], out=str(tmp_path / "panel"), fit=replace(tiny_run[2].fit, epochs=2),
                   sparse=SparseOptions(finetune_epochs=1, round_epochs=1, candidates=(1, 2), validation=0.25))
    p = TrainingPanel(base)
    p.start.click()
    p.wait(120)
    assert p.error is None and "done: test top-1" in p.status.value
    assert "idw-msg-error" in p.status.value and "no compact head within the 0.5-point budget" in p.status.value
    assert "the dense head: no compact head kept the budget" in p.status.value
    # it ends on the frontier: every head kept (the dense one shown), what each step down in K costs
    assert p.frontier_box.layout.display is None and list(p.frontier.data[0].x)[:2] == [1, 2]
    assert "Each step down in K: " in p.frontier_note.value and "infodisent select" in p.frontier_note.value
    # the browser and the explorer of that run say it at their top, above everything they show
    for w in (ChannelBrowser(base.out), DecisionExplorer(base.out)):
        assert "<div class='idw-msg-error'>WARNING: no compact head" in w.children[0].value
        assert "the dense head is shown" in w.children[0].value
    assert "<div class='idw-msg-error'>" not in ChannelBrowser(tiny_run[2].out).children[0].value  # a dense run: quiet


def test_a_wrong_form_is_a_message(tiny_run, tmp_path):
    p = TrainingPanel(replace(tiny_run[2], out=str(tmp_path / "x")))
    p.out.value = " "
    p.start.click()
    assert "name a run folder" in p.messages.last and not p.running
    p.out.value = str(tmp_path / "y")
    p.dataset.value = "cub"
    p.root.value = str(tmp_path / "nowhere")
    p.start.click()
    p.wait(60)
    assert "nowhere" in p.messages.last and not p.start.disabled
