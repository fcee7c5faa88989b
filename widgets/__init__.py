"""Jupyter widgets over a run: :class:`ChannelBrowser`, :class:`DecisionExplorer`, :class:`TrainingPanel`.

Thin shells over :class:`~infodisent.run.Run`, :mod:`~infodisent.explain.explanation`, :mod:`~infodisent.explain.render` and
:mod:`~infodisent.viz.plots` (stock ipywidgets 8, plotly ``FigureWidget``, ipyevents for clicks on images; no
front-end build). Each has ``.static(...)`` for places without a widget manager. A face (the top floor,
tests/test_layout.py): they call the library and draw; nothing in the package imports them.

Example:
    >>> from infodisent.widgets import ChannelBrowser, DecisionExplorer, TrainingPanel
    >>> run = infodisent.open_run("runs/demo")
    >>> ChannelBrowser(run)            # the channels as prototypes
    >>> DecisionExplorer(run, 18)      # test image 18's decision, channel by channel
    >>> TrainingPanel()                # train a head without blocking the notebook
"""

from .channel_browser import ChannelBrowser
from .decision_explorer import DecisionExplorer
from .training_panel import TrainingPanel

__all__ = ["ChannelBrowser", "DecisionExplorer", "TrainingPanel"]
