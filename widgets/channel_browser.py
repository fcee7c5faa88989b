"""ChannelBrowser: one channel at a time, as a prototype: its patches, its classes, its values, its parts.

Example:
    >>> from infodisent.widgets import ChannelBrowser
    >>> ChannelBrowser(infodisent.open_run("runs/demo"))            # in a notebook cell
    >>> ChannelBrowser(run).static(channel=5)                        # pictures and figures, no widget manager
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

import ipywidgets as W
import numpy as np
import pandas as pd

from infodisent.errors import InputError
from infodisent.eval.part_metrics import channel_purity, has_parts, prototype_parts
from infodisent.explain.explanation import channel_overview, explain_channel, explain_class
from infodisent.explain.prototypes import PrototypeIndex, StaleIndexError
from infodisent.records.options import WEIGHT_THRESHOLD
from infodisent.run import Run, open_run
from infodisent.studies.shortcuts import suspicious_channels
from infodisent.viz.plots import classes_figure, patch_image, strip, value_histogram

from .common import (
    CSS,
    Messages,
    StaticView,
    budget_banner,
    encode,
    esc,
    figure_widget,
    guarded,
    image,
    k_selector,
    refresh,
)

if TYPE_CHECKING:
    from .decision_explorer import DecisionExplorer

PATCH = 112  # px of a prototype patch
LIST_SIZE = 30  # channels a picking list offers


class ChannelBrowser(W.VBox):
    """Browse a run's channels through its prototype index (see the module docstring).

    Args:
        run: an open :class:`~infodisent.run.Run` (or its directory).
        channel: the first channel shown. Default None: the heaviest channel of class 0.
        split: whose prototype index to read (``train``: the patches the model learnt from). Default ``"train"``.
        n: prototypes shown per side. Default 6.
    """

    def __init__(self, run: Run | str, channel: int | None = None, *, split: str = "train", n: int = 6):
        super().__init__()
        self.run = run if isinstance(run, Run) else open_run(run)
        self.split, self.n = split, n
        self.model = self.run.model
        self.num_channels = self.model.head.config.num_features
        self.messages = Messages()
        self.last_traceback: str | None = None
        self.index: PrototypeIndex | None = None
        self.explorer: DecisionExplorer | None = None
        self.shown_images: dict[str, list[int]] = {"pos": [], "neg": []}
        self._purity: pd.Series | None = None
        self._parts_cache: dict = {}  # parts of the images seen so far (prototype_parts' cache)
        self._overview_table: pd.DataFrame | None = None
        self._suspects: pd.DataFrame | None = None
        d_max = self.num_channels - 1

        # choose a channel
        self.channel = W.BoundedIntText(value=0, min=0, max=d_max, description="channel",
                                        layout=W.Layout(width="170px"))
        self.slider = W.IntSlider(value=0, min=0, max=d_max, continuous_update=False, readout=False,
                                  layout=W.Layout(width="280px"))
        W.link((self.channel, "value"), (self.slider, "value"))
        self.prev = W.Button(description="◀ previous", layout=W.Layout(width="100px"))
        self.next = W.Button(description="next ▶", layout=W.Layout(width="100px"))
        compact = self.model.channels_per_class is not None
        self.used_only = W.Checkbox(value=compact, description="used channels only", indent=False,
                                    layout=W.Layout(width="170px"),
                                    tooltip="step and list only channels that some class weighs")
        self.prev.on_click(lambda _: self.step(-1))
        self.next.on_click(lambda _: self.step(+1))
        self.k = k_selector(self.run)

        # or pick one from a list
        self.pick_by = W.Dropdown(options=[("that a class uses", "class"), ("that fire on an image", "image"),
                                           ("ranked by a metric", "ranking")], value="class",
                                  layout=W.Layout(width="260px"))
        self.pick_class = W.Dropdown(options=[(f"{i}: {n}", i) for i, n in enumerate(self.run.class_names)],
                                     value=0, layout=W.Layout(width="260px"))
        self.pick_image = W.BoundedIntText(value=0, min=0, max=0, description=f"{split} image",
                                           layout=W.Layout(width="200px"))
        metrics = [("weight (sum over classes)", "total_weight"), ("classes that use it", "classes"),
                   ("class purity of its patches", "class_purity"), ("fires on (share of images)", "fires")]
        try:
            if has_parts(self.run.dataset(split)):
                metrics.insert(2, ("part purity", "purity"))
                self.pick_by.options = list(self.pick_by.options) + [("suspicious: on no part", "suspicious")]
        except Exception:  # noqa: BLE001 - no dataset on this machine: no part metrics
            pass
        self.suspicious_note = W.HTML(
            "<div class='idw-note'>channels a class leans on whose prototypes show no annotated part, most "
            "suspicious first: a shortcut (a watermark, a background) looks like this</div>",
            layout=W.Layout(width="330px"))
        self.pick_metric = W.Dropdown(options=metrics, value="total_weight", layout=W.Layout(width="260px"))
        self.choices = W.Select(options=[], rows=9, layout=W.Layout(width="330px"))
        self.pick_box = W.HBox()

        # what is shown
        self.header = W.HTML()
        self.mode = W.ToggleButtons(options=[("crops", "crop"), ("heatmaps", "heatmap"), ("whole image", "box")],
                                    value="crop", style={"button_width": "110px"})
        self.cards = {side: [self._card(side, r) for r in range(n)] for side in ("pos", "neg")}
        self.side_titles = {side: W.HTML() for side in ("pos", "neg")}
        self.classes_fig = figure_widget(280, 440)
        self.hist_fig = figure_widget(260, 440)
        self.parts = W.HTML()
        self.mine_button = W.Button(description="mine the prototype index", button_style="warning",
                                    layout=W.Layout(display="none", width="240px"))
        self.mine_button.on_click(lambda _: self.mine())
        self.explorer_box = W.VBox()

        pick_panel = W.VBox([W.HTML("<div class='idw-note'>or pick one of the channels…</div>"),
                             self.pick_by, self.pick_box, self.choices], layout=W.Layout(width="360px"))
        patches = W.VBox([self.mode,
                          self.side_titles["pos"], W.HBox([c for c, *_ in self.cards["pos"]]),
                          self.side_titles["neg"], W.HBox([c for c, *_ in self.cards["neg"]])])
        self.children = [
            W.HTML(CSS + f"<div class='idw-title'>Channel browser: {esc(self.run.path.name)} "
                   f"({self.num_channels} channels, {len(self.run.class_names)} classes)</div>"
                   + budget_banner(self.run)),
            W.HBox([self.channel, self.slider, self.prev, self.next, self.used_only]), self.k,
            self.messages, self.mine_button,
            W.HBox([W.VBox([self.header, patches], layout=W.Layout(width="820px")), pick_panel]),
            W.HBox([W.VBox([self.classes_fig], layout=W.Layout(width="450px")),
                    W.VBox([self.hist_fig], layout=W.Layout(width="450px")),
                    W.VBox([self.parts], layout=W.Layout(width="300px"))]),
            self.explorer_box,
        ]
        self.channel.observe(lambda ch: self.show(ch["new"]), names="value")
        for control in (self.pick_by, self.pick_class, self.pick_image, self.pick_metric):
            control.observe(lambda _: self.update_choices(), names="value")
        self.used_only.observe(lambda _: self.update_choices(), names="value")
        self.choices.observe(self._chosen, names="value")
        self.k.observe(lambda ch: ch["new"] is not None and self.use_k(ch["new"]), names="value")
        self.mode.observe(lambda _: self.show(self.channel.value), names="value")
        bad = channel is not None and not 0 <= int(channel) < self.num_channels
        if self._load_index():
            first = channel if channel is not None and not bad else self._first_channel()
            self.update_choices()
            if first == self.channel.value:
                self.show(first)
            else:
                self.channel.value = first  # shows it
        if bad:
            self.messages.error(f"channel {channel} is outside 0..{self.num_channels - 1}; showing class 0's "
                                f"heaviest channel instead")

    # ------------------------------------------------------------------ the index

    @guarded
    def _load_index(self) -> bool:
        try:
            self.index = self.run.index(self.split)
        except (FileNotFoundError, StaleIndexError) as e:
            self.index = None
            stale = isinstance(e, StaleIndexError)
            self.messages.error(f"{'stale prototype index' if stale else 'no prototype index'} for the "
                                f"{self.split} split: {e} (or press the button: one pass over the split's features)")
            self.mine_button.layout.display = None
            return False
        self.pick_image.max = self.index.meta.num_images - 1
        self.mine_button.layout.display = "none"
        return True

    @guarded
    def mine(self) -> None:
        """Mine the split's prototype index (what the "mine" button does), then show the channel."""
        from infodisent.pipeline import mine_run

        self.messages.info(f"mining the {self.split} split's prototype index…")
        mine_run(self.run, self.split, progress=False)
        self._purity, self._parts_cache, self._overview_table, self._suspects = None, {}, None, None
        if self._show_index():
            self.messages.info(f"mined: {self.index}")

    def _show_index(self) -> bool:
        """Load the split's index and show the first channel from it; False (said) when there is none."""
        if not self._load_index():
            return False
        self.update_choices()
        first = self._first_channel()
        if first == self.channel.value:
            self.show(first)
        else:
            self.channel.value = first  # shows it
        return True

    @guarded
    def use_k(self, k: int | str | None) -> None:
        """Browse another head the run keeps (:meth:`~infodisent.run.Run.with_k`: ``k`` channels per class, or
        ``"dense"``): its channels and its own prototype index, mined the first time that head is browsed (said).

        Args:
            k: a kept head's channels per class, or ``"dense"`` (or None) for the dense reference."""
        self.run = self.run.with_k(k)
        key = self.run.head_key
        if self.k.value != key:  # called from code: the menu follows, and its callback shows the head once
            self.k.value = key
            return
        self.model = self.run.model
        self.__dict__.pop("used_channels", None)
        self._purity, self._parts_cache, self._overview_table, self._suspects = None, {}, None, None
        if not self.run.has_index(self.split):  # the first time this head is browsed: its own index, mined now
            self.mine()
            if self.index is not None:
                self.messages.info(f"showing the head with K={key}; its {self.split} prototype index was mined now, "
                                   f"the first time it is browsed ({self.index})")
        elif self._show_index():
            self.messages.info(f"showing the head with K={key}")

    def _first_channel(self) -> int:
        w = self.model.W[0].detach().cpu().numpy()
        return int(w.argmax())

    @cached_property
    def used_channels(self) -> np.ndarray:
        """Channels some class weighs (above ``WEIGHT_THRESHOLD``); the head does not change while the browser is
        open."""
        return np.flatnonzero(self.model.W.detach().cpu().numpy().max(0) > WEIGHT_THRESHOLD)

    def _overview(self) -> pd.DataFrame:
        """:func:`channel_overview` of the loaded index, computed once per index."""
        if self._overview_table is None:
            self._overview_table = channel_overview(self.model, self.index)
        return self._overview_table

    # ------------------------------------------------------------------ picking

    def step(self, delta: int) -> None:
        """The previous or next channel (of the used ones when "used only" is ticked), wrapping around.

        Args:
            delta: +1 for the next channel, -1 for the previous one."""
        d = self.channel.value
        if self.used_only.value and len(self.used_channels):
            used = self.used_channels
            j = np.searchsorted(used, d, side="right" if delta > 0 else "left")
            j = j if delta > 0 else j - 1
            self.channel.value = int(used[j % len(used)])
        else:
            self.channel.value = (d + delta) % self.num_channels

    @guarded
    def update_choices(self) -> None:
        """Fill the picking list from the chosen source (a class, an image, a ranking)."""
        by = self.pick_by.value
        self.pick_box.children = [{"class": self.pick_class, "image": self.pick_image,
                                   "ranking": self.pick_metric, "suspicious": self.suspicious_note}[by]]
        if self.index is None:
            return
        if by == "class":
            ce = explain_class(self.model, self.pick_class.value, self.index)
            rows = ce.channels.head(LIST_SIZE)
            options = [(f"ch {d}: W {w:.3f} ({100 * s:.0f}% of the class's weight)", int(d))
                       for d, w, s in zip(rows["channel"], rows["weight"], rows["share"])]
        elif by == "image":
            i = self.pick_image.value
            if not self.index.valid[i]:
                raise InputError(f"{self.split} image {i} could not be read when the index was mined")
            v = np.asarray(self.index.v[i], np.float64)
            order = np.argsort(-np.abs(v), kind="stable")
            if self.used_only.value:
                order = order[np.isin(order, self.used_channels)]
            options = [(f"ch {d}: v {v[d]:+.3f}", int(d)) for d in order[:LIST_SIZE]]
        elif by == "suspicious":
            if self._suspects is None:
                self._suspects = suspicious_channels(self.run, self.split)
            top = self._suspects.head(LIST_SIZE)
            options = [(f"ch {d}: {100 * b:.0f}% on no part, {100 * r:.0f}% of {name}'s evidence", int(d))
                       for d, b, r, name in zip(top["channel"], top["background"], top["reliance"], top["class_name"])]
        else:
            metric = self.pick_metric.value
            overview = self._overview()
            if self.used_only.value or metric == "purity":
                overview = overview[overview["channel"].isin(self.used_channels)]
            if metric == "purity":
                if self._purity is None:
                    self._purity = channel_purity(self.index, self.run.dataset(self.split), self.model.transform,
                                                  self.used_channels)
                overview = overview.assign(purity=self._purity.reindex(overview["channel"]).to_numpy())
            top = overview.sort_values(metric, ascending=False, kind="stable").head(LIST_SIZE)
            options = [(f"ch {d}: {metric} {x:.3f}", int(d)) for d, x in zip(top["channel"], top[metric])]
        self.choices.unobserve(self._chosen, names="value")
        self.choices.options = options
        self.choices.value = None
        self.choices.observe(self._chosen, names="value")

    def _chosen(self, change) -> None:
        if change["new"] is not None:
            self.channel.value = int(change["new"])

    # ------------------------------------------------------------------ one channel

    def _card(self, side: str, rank: int):
        img = image(PATCH)
        label = W.HTML(layout=W.Layout(width=f"{PATCH + 14}px", height="40px", overflow="hidden"))
        button = W.Button(description="explain image", layout=W.Layout(width=f"{PATCH}px"),
                          tooltip="open this training image in the decision explorer")
        button.on_click(lambda _: self.explain_patch(side, rank))
        return W.VBox([img, label, button], layout=W.Layout(margin="0 6px 4px 0")), img, label, button

    @guarded
    def show(self, channel: int) -> None:
        """Show ``channel``: header, patches of both sides, classes, value histogram, parts.

        Args:
            channel: the channel, in ``0..D-1``."""
        if self.index is None:
            return
        d = int(channel)
        if not 0 <= d < self.num_channels:
            raise InputError(f"channel {d} is outside 0..{self.num_channels - 1}")
        self.messages.clear()
        classes, shown, marks, values = self._channel(d)
        for side, word in (("pos", "positive"), ("neg", "negative")):
            patches = shown[side]
            self.shown_images[side] = [p.image for p in patches]
            for j, (_, img, label, button) in enumerate(self.cards[side]):
                if j < len(patches):
                    p = patches[j]
                    img.value = encode(patch_image(p, self.mode.value, PATCH))
                    name = self.run.class_names[p.label] if p.label is not None else "?"
                    label.value = (f"<div class='idw-note' title='{esc(name)}' style='white-space: nowrap; "
                                   f"overflow: hidden; text-overflow: ellipsis'>#{p.image} {esc(name)}<br>"
                                   f"response {p.value:.2f}</div>")
                    button.layout.visibility = "visible"
                    img.layout.visibility = "visible"
                else:
                    img.layout.visibility = button.layout.visibility = "hidden"
                    label.value = ""
            cls = "idw-pos" if side == "pos" else "idw-neg"
            self.side_titles[side].value = (
                f"<span class='{cls}'>top {word} responses</span> <span class='idw-note'>({len(patches)} of the "
                f"index's {self.index.k}; the {self.split} images where the channel's {word} side peaks "
                f"highest)</span>" if patches else
                f"<span class='{cls}'>no {word} responses</span> <span class='idw-note'>(never fires on that "
                f"side)</span>")
        refresh(self.classes_fig, classes_figure(classes, d))
        refresh(self.hist_fig, value_histogram(values, d, marks))
        self.header.value = self._header(d, classes, values)
        self.parts.value = self._parts(d)

    def _channel(self, d: int) -> tuple[pd.DataFrame, dict[str, list], dict[str, np.ndarray], np.ndarray]:
        """What both the widget and :meth:`static` show of channel ``d``: the classes that weigh it, its
        shown patches per side, their images' pooled values (the histogram's marks) and every image's value."""
        renderer = self.run.renderer(self.split)
        shown = {side: renderer.prototypes(d, side, self.n) for side in ("pos", "neg")}
        marks = {f"{word} prototypes": np.asarray(self.index.v[[p.image for p in shown[side]], d])
                 for side, word in (("pos", "positive"), ("neg", "negative"))}
        values = np.asarray(self.index.v[:, d])[self.index.valid]
        return explain_channel(self.model, d, self.index).classes, shown, marks, values

    def _header(self, d: int, classes: pd.DataFrame, values: np.ndarray) -> str:
        if len(classes):
            top = ", ".join(f"{esc(n)} (W {w:.3f})" for n, w in zip(classes["name"][:3], classes["weight"][:3]))
            used = f"used by {len(classes)} class{'es' if len(classes) > 1 else ''}: {top}" + \
                   (", …" if len(classes) > 3 else "")
        else:
            used = "no class uses it (all its weights are 0)"
        fires = float((values > 0).mean()) if len(values) else float("nan")
        return (f"<div class='idw-title'>channel {d}</div><div class='idw-note'>{used}. Its pooled value is > 0 "
                f"on {100 * fires:.0f}% of the {len(values)} {self.split} images.</div>")

    def _parts(self, d: int) -> str:
        ds = self.run.dataset(self.split)
        if not has_parts(ds):
            return ""
        pp = prototype_parts(self.index, ds, self.model.transform, d, "pos", cache=self._parts_cache).head(self.n)
        if pp.empty:
            return "<div class='idw-note'>no positive patches: no parts to show</div>"
        counts = pd.Series([p for parts in pp["parts"] for p in parts] or [None], dtype=object).value_counts()
        rows = "".join(f"<tr><td>{esc(k)}</td><td>{v} of {len(pp)}</td></tr>" for k, v in counts.items())
        bare = int((pp["parts"].map(len) == 0).sum())
        return (f"<div class='idw-title'>parts in its top positive patches</div><table class='idw-table'>{rows}"
                f"</table><div class='idw-note'>{bare} of {len(pp)} show no annotated part</div>")

    # ------------------------------------------------------------------ to the decision explorer

    @guarded
    def explain_patch(self, side: str, rank: int) -> None:
        """Open the image of a shown patch in the decision explorer (below the browser).

        Args:
            side: ``"pos"`` or ``"neg"``, the row of the patch.
            rank: its place in that row, from 0."""
        from .decision_explorer import DecisionExplorer

        images = self.shown_images[side]
        if rank >= len(images):
            raise InputError(f"no {side} patch of rank {rank} is shown")
        i = int(images[rank])
        if self.explorer is None:
            self.explorer = DecisionExplorer(self.run, i, split=self.split)
            self.explorer_box.children = [W.HTML(), self.explorer]
        else:
            self.explorer.load(i, split=self.split)
        self.explorer_box.children[0].value = (f"<div class='idw-title'>the decision on {self.split} image {i}, "
                                               f"from channel {self.channel.value}'s patches</div>")
        self.explorer.select_channel(self.channel.value)

    # ------------------------------------------------------------------ without a widget manager

    def static(self, channel: int | None = None) -> StaticView:
        """The browser's view of ``channel`` as pictures and plotly figures (no widgets).

        Args:
            channel: the channel. Default None: the one the browser shows."""
        d = self.channel.value if channel is None else int(channel)
        if self.index is None:
            self.index = self.run.index(self.split)  # raises the clear error
        classes, shown, marks, values = self._channel(d)
        images = {f"top {word} responses": strip([patch_image(p, "crop", PATCH) for p in shown[side]])
                  for side, word in (("pos", "positive"), ("neg", "negative")) if shown[side]}
        marks = {name: xs for name, xs in marks.items() if len(xs)}
        return StaticView(f"channel {d} of {self.run.path.name}", images,
                          {"classes": classes_figure(classes, d), "values": value_histogram(values, d, marks)})


__all__ = ["ChannelBrowser"]
