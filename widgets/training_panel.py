"""TrainingPanel: train an InfoDisent head from a notebook without blocking it, watch it, stop it, open it.

The panel is a form over :class:`~infodisent.records.run.RunConfig` and a view of a
:class:`~infodisent.train.monitor.Monitor`: ``train_run(config, monitor=...)`` runs on
a background thread, the monitor feeds the progress bar and the curves, and
Stop asks it to end after the current epoch (the checkpoint resumes it).

Example:
    >>> from infodisent.widgets import TrainingPanel
    >>> TrainingPanel(infodisent.demo_config("runs/mine"))    # the form starts from this configuration
"""

from __future__ import annotations

import threading
from dataclasses import replace

import ipywidgets as W
import pandas as pd

from infodisent.data.datasets import DATASETS
from infodisent.errors import InputError
from infodisent.pipeline import train_run
from infodisent.records.model import DEFAULT_BACKBONE
from infodisent.records.options import SparseOptions
from infodisent.records.run import RunConfig
from infodisent.train.monitor import Monitor, Progress, TrainingStopped
from infodisent.viz.plots import frontier_figure, history_figure
from infodisent.viz.sentences import budget, frontier_steps

from .common import CSS, Messages, esc, figure_widget, guarded, refresh

HEADS = [("compact: K chosen on held-out images", "chosen"), ("compact: fixed K", "fixed"),
         ("dense (the paper's head)", "dense")]


class TrainingPanel(W.VBox):
    """A form that trains a run on a background thread, with live progress, curves and a Stop button.

    Args:
        config: the configuration the form starts from; fields the form does not show (dataset
            generation settings, cache folder, head options, ...) are kept from it. Default None:
            ``RunConfig(out="runs/panel")``.
    """

    def __init__(self, config: RunConfig | None = None):
        super().__init__()
        base = config or RunConfig(out="runs/panel")
        self.base = base
        self.messages = Messages()
        self.last_traceback: str | None = None
        self.thread: threading.Thread | None = None
        self.monitor: Monitor | None = None
        self.result = None  # the RunResult of the last finished training
        self.error: BaseException | None = None
        def wide():  # one Layout per widget: a shared one would hide them all with the K field
            return W.Layout(width="380px")

        def narrow():
            return W.Layout(width="190px")

        style = {"description_width": "90px"}

        self.dataset = W.Dropdown(options=list(DATASETS), value=base.dataset, description="dataset",
                                  layout=narrow(), style=style)
        self.root = W.Text(value=base.root or "", description="root", placeholder="folder (not for parts)",
                           layout=wide(), style=style)
        self.backbone = W.Text(value=base.backbone, description="backbone", placeholder=DEFAULT_BACKBONE,
                               layout=wide(), style=style)
        self.weights = W.Text(value=base.weights, description="weights", layout=wide(), style=style,
                              placeholder="offline, hub:…, a file, or random")
        self.image_size = W.IntText(value=base.image_size or 0, description="image size", layout=narrow(),
                                    style=style, tooltip="0: the backbone's own")
        self.max_classes = W.IntText(value=base.max_classes or 0, description="max classes", layout=narrow(),
                                     style=style, tooltip="0: all classes")
        self.epochs = W.BoundedIntText(value=base.fit.epochs, min=1, max=10_000, description="epochs",
                                       layout=narrow(), style=style)
        sp = base.sparse
        self.head = W.Dropdown(options=HEADS, value="dense" if sp is None else "chosen" if sp.chosen else "fixed",
                               description="head", layout=wide(), style=style)
        self.prune_k = W.BoundedIntText(value=(sp.channels_per_class if sp and sp.channels_per_class else 5),
                                        min=1, max=100_000, description="K (--prune-k)", layout=narrow(), style=style)
        self.out = W.Text(value=base.out, description="run folder", layout=wide(), style=style)
        self.resume = W.Checkbox(value=False, description="resume it", indent=False, layout=W.Layout(width="120px"))
        self.overwrite = W.Checkbox(value=base.overwrite, description="overwrite it", indent=False,
                                    layout=W.Layout(width="120px"))

        self.start = W.Button(description="Start", button_style="success", icon="play")
        self.stop = W.Button(description="Stop", button_style="danger", icon="stop", disabled=True,
                             tooltip="end after the current epoch, with a checkpoint that resumes")
        self.start.on_click(lambda _: self.start_training())
        self.stop.on_click(lambda _: self.request_stop())
        self.bar = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="400px"))
        self.status = W.HTML("<div class='idw-note'>not started</div>")
        self.curves = figure_widget(300)
        refresh(self.curves, history_figure(pd.DataFrame({"epoch": []})))
        self.frontier = figure_widget(320)  # the run's kept heads, once it is done
        self.frontier_box = W.VBox([self.frontier], layout=W.Layout(display="none"))
        self.frontier_note = W.HTML()
        self.open_browser = W.Button(description="open in ChannelBrowser", disabled=True,
                                     layout=W.Layout(width="200px"))
        self.open_explorer = W.Button(description="open in DecisionExplorer", disabled=True,
                                      layout=W.Layout(width="200px"))
        self.open_browser.on_click(lambda _: self.show_browser())
        self.open_explorer.on_click(lambda _: self.show_explorer())
        self.opened = W.VBox()
        self.head.observe(lambda _: self._toggle_k(), names="value")
        self._toggle_k()

        form = W.VBox([self.dataset, self.root, self.backbone, self.weights,
                       W.HBox([self.image_size, self.max_classes]), W.HBox([self.epochs, self.prune_k]),
                       self.head, self.out, W.HBox([self.resume, self.overwrite])], layout=W.Layout(width="400px"))
        live = W.VBox([W.HBox([self.start, self.stop]), self.bar, self.status, self.curves, self.frontier_note,
                       self.frontier_box, W.HBox([self.open_browser, self.open_explorer])],
                      layout=W.Layout(width="700px"))
        self.children = [W.HTML(CSS + "<div class='idw-title'>Train an InfoDisent head</div>"), self.messages,
                         W.HBox([form, live]), self.opened]

    def _toggle_k(self) -> None:
        self.prune_k.layout.visibility = "visible" if self.head.value == "fixed" else "hidden"

    # ------------------------------------------------------------------ the configuration

    def config(self) -> RunConfig:
        """The :class:`RunConfig` the form describes (raises a clear error for a wrong field)."""
        sparse = self.base.sparse or SparseOptions()
        if self.head.value == "dense":
            sparse = None
        elif self.head.value == "fixed":
            sparse = replace(sparse, channels_per_class=int(self.prune_k.value))
        else:
            sparse = replace(sparse, channels_per_class=None)
        if not self.out.value.strip():
            raise InputError("name a run folder")
        return replace(
            self.base, out=self.out.value.strip(), dataset=self.dataset.value, root=self.root.value.strip() or None,
            backbone=self.backbone.value.strip() or DEFAULT_BACKBONE, weights=self.weights.value.strip() or "offline",
            image_size=self.image_size.value or None, max_classes=self.max_classes.value or None,
            fit=replace(self.base.fit, epochs=int(self.epochs.value)), sparse=sparse, resume=self.resume.value,
            overwrite=self.overwrite.value and not self.resume.value, progress=False,
            parts=self.base.parts if self.dataset.value == "parts" else None,
        )

    # ------------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    @guarded
    def start_training(self) -> None:
        """Start ``train_run`` on a background thread (what Start does)."""
        if self.running:
            raise RuntimeError("a training is running; stop it first")
        cfg = self.config()
        self.messages.clear()
        self.result, self.error = None, None
        self.monitor = Monitor(on_progress=self._progress, on_epoch=self._epoch)
        self.open_browser.disabled = self.open_explorer.disabled = True
        self.start.disabled, self.stop.disabled = True, False
        self.status.value = f"<div class='idw-note'>starting {esc(cfg.out)}…</div>"
        refresh(self.curves, history_figure(pd.DataFrame({"epoch": []})))
        self.frontier_box.layout.display, self.frontier_note.value = "none", ""
        self.thread = threading.Thread(target=self._train, args=(cfg,), name="infodisent-train", daemon=True)
        self.thread.start()

    def request_stop(self) -> None:
        """End the training after the current epoch (what Stop does)."""
        if self.monitor is not None:
            self.monitor.request_stop()
            self.stop.disabled = True
            self.status.value = "<div class='idw-note'>stopping after this epoch…</div>"

    def wait(self, timeout: float | None = None) -> None:
        """Block until the training thread ends (for scripts and tests).

        Args:
            timeout: the most seconds to wait. Default None: until it ends."""
        if self.thread is not None:
            self.thread.join(timeout)

    def _train(self, cfg: RunConfig) -> None:
        try:
            self.result = train_run(cfg, monitor=self.monitor)
        except TrainingStopped as e:
            self.error = e
            self.status.value = (f"<div class='idw-msg-info'>{esc(e)}. Tick “resume” and press Start to "
                                 f"continue the run in {esc(cfg.out)}.</div>")
            self.resume.value = True
        except Exception as e:  # noqa: BLE001 - shown in the panel; the notebook goes on
            self.error = e
            self.messages.error(f"{type(e).__name__}: {e}")
            self.status.value = "<div class='idw-note'>failed</div>"
        else:
            m = self.result.metrics
            k = m.sparse.channels_per_class if m.sparse is not None else None
            sel = m.sparse.selection if m.sparse is not None else None
            missed = "" if sel is None or sel.within_tolerance else f"<div class='idw-msg-error'>{esc(budget(sel))}</div>"
            self.status.value = (f"<div class='idw-msg-info'>done: test top-1 {m.infodisent.top1:.3f}"
                                 + (f" (dense {m.sparse.dense.top1:.3f}, K = {k})" if k else
                                    " (the dense head: no compact head kept the budget)" if m.sparse is not None else "")
                                 + f" in {esc(cfg.out)}</div>" + missed)
            self._show_frontier(m, sel)
            self.open_browser.disabled = self.open_explorer.disabled = False
            self.resume.value = False
        finally:
            self.start.disabled, self.stop.disabled = False, True

    def _show_frontier(self, m, sel) -> None:
        """End on the run's frontier: every head it keeps, what each K costs and buys, how to show another."""
        if len(m.frontier) < 2:
            return
        refresh(self.frontier, frontier_figure(m.frontier, m.linear_probe, sel.rule_choice if sel else None))
        self.frontier_box.layout.display = None
        steps = frontier_steps(m.frontier)
        self.frontier_note.value = (f"<div class='idw-note'>{esc(steps)}. Every head is kept: the browsers' "
                                    f"“head” menu shows another, <code>infodisent select</code> makes it the "
                                    f"run's.</div>")

    def _progress(self, p: Progress) -> None:
        try:  # a display problem must not end the training it shows
            self._show_progress(p)
        except Exception as e:  # noqa: BLE001
            self.messages.error(f"progress display: {type(e).__name__}: {e}")

    def _show_progress(self, p: Progress) -> None:
        if p.stage == "done":
            self.bar.max, self.bar.value = 1, 1
            return
        self.bar.max = max(p.total, 1)
        self.bar.value = min(p.done, self.bar.max)
        unit = "feature maps" if p.stage.startswith("features") else "epochs"
        self.bar.description = p.stage.split()[0]
        if not (self.monitor and self.monitor.stop_requested):
            self.status.value = f"<div class='idw-note'>{esc(p.stage)}: {p.done} of {p.total} {unit}</div>"

    def _epoch(self, row: dict) -> None:
        try:
            refresh(self.curves, history_figure(pd.DataFrame(self.monitor.rows)))
        except Exception as e:  # noqa: BLE001 - as in _progress
            self.messages.error(f"curves: {type(e).__name__}: {e}")

    # ------------------------------------------------------------------ the result

    @guarded
    def show_browser(self) -> None:
        """Open the finished run in a :class:`ChannelBrowser` below the panel."""
        from .channel_browser import ChannelBrowser

        self.opened.children = [ChannelBrowser(self.result.open())]

    @guarded
    def show_explorer(self) -> None:
        """Open the finished run in a :class:`DecisionExplorer` below the panel."""
        from .decision_explorer import DecisionExplorer

        self.opened.children = [DecisionExplorer(self.result.open(), 0)]


__all__ = ["TrainingPanel"]
