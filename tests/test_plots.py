"""The figures (infodisent.viz.plots) the widgets and notebooks draw."""

import numpy as np
import pytest

from infodisent.explain.explanation import explain_channel
from infodisent.viz.plots import classes_figure, history_figure, value_histogram, versus_figure, waterfall_figure


def test_the_waterfall_adds_up_to_the_logit_and_names_its_channels(run):
    e = run.explain(0)
    for target in range(3):
        t = e.with_target(target)
        fig = waterfall_figure(t, n=3)
        w = fig.data[0]
        steps = np.asarray(w.x[:-1], float)
        assert w.measure[-1] == "total" and w.x[-1] == pytest.approx(t.logit)
        assert steps.sum() == pytest.approx(t.logit)
        shown = [c for c in w.customdata if c >= 0]
        table = t.table().set_index("channel")
        for label, value, c in zip(w.y, w.x, w.customdata):
            if c >= 0:
                assert label == f"ch {c}" and value == pytest.approx(table.at[c, "contribution"])
        assert len(shown) <= 6


def test_versus_classes_histogram_and_history_figures(run):
    e = run.explain(0)
    other = int(np.argsort(-e.logits[0])[1])
    fig = versus_figure(e, other, n=4)
    vs = e.versus(other).set_index("channel")
    for c, a, b in fig.data[0].customdata:
        assert vs.at[int(c), "contribution_target"] == pytest.approx(a)
        assert vs.at[int(c), "contribution_other"] == pytest.approx(b)
    ce = explain_channel(run.model, 0)
    assert list(classes_figure(ce.classes, 0).data[0].y) == [str(n) for n in ce.classes["name"][:10]]
    h = value_histogram(np.array([1.0, 2.0, np.nan]), 0, {"positive prototypes": np.array([2.0])})
    assert len(h.data[0].x) == 2 and list(h.data[1].x) == [2.0]
    hist = run.history
    hf = history_figure(hist)
    assert list(hf.data[0].y) == list(hist["train_loss"])
