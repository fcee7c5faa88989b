"""DecisionExplorer: one decision, taken apart channel by channel, with a post-hoc reference beside it.

Example:
    >>> from infodisent.widgets import DecisionExplorer
    >>> DecisionExplorer(infodisent.open_run("runs/demo"), 18)       # test image 18
    >>> DecisionExplorer(run, 18).static(target=3, other=1)           # pictures and figures, no widget manager
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from typing import Any, Iterator

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
from ipyevents import Event
from PIL import Image

from infodisent.core.geometry import cell_at, cell_box
from infodisent.errors import InputError
from infodisent.explain.explanation import Explanation
from infodisent.explain.posthoc import PosthocCAM, backbone_maps
from infodisent.explain.prototypes import StaleIndexError
from infodisent.explain.render import evidence as channel_evidence
from infodisent.run import Run, open_run
from infodisent.viz.plots import draw_box, overlay, patch_image, strip, versus_figure, waterfall_figure

from .common import (
    CSS,
    Messages,
    StaticView,
    budget_banner,
    encode,
    esc,
    figure_widget,
    guarded,
    k_selector,
    refresh,
    signed,
    table_html,
)
from .common import image as image_widget

SIZE = 336  # px of the main image
SMALL = 168  # px of the comparison images
PROTO = 96  # px of a prototype patch
CLICK = (33, 150, 243)  # the clicked cell's outline


class DecisionExplorer(W.VBox):
    """Take one decision of a run's model apart (see the module docstring).

    Args:
        run: an open :class:`~infodisent.run.Run` (or its directory).
        image: a dataset index of ``split``, or an image (PIL image or path). Default 0.
        split: the split dataset indices refer to. Default ``"test"``.
        index_split: whose prototype index gives the channels' prototypes. Default ``"train"``.
        n: channels shown on each side of the waterfall. Default 8.
    """

    def __init__(self, run: Run | str, image: Any = 0, *, split: str = "test", index_split: str = "train",
                 n: int = 8):
        super().__init__()
        self.run = run if isinstance(run, Run) else open_run(run)
        self.model = self.run.model
        self.split, self.index_split, self.n = split, index_split, n
        self.messages = Messages()
        self.last_traceback: str | None = None
        self.expl: Explanation | None = None  # the decision, explained for the chosen class
        self._features = None  # the image's backbone maps (for the CAMs)
        self._cams = PosthocCAM(self.model)
        self._cam_maps: dict[str, np.ndarray] = {}
        self.selected: int | None = None
        self.off: list[int] = []  # channels switched off (the decision without them is shown at once)
        self.point_table = None
        self.clicked: tuple[float, float] | None = None  # view coordinates of the last click
        names = [(f"{i}: {n}", i) for i, n in enumerate(self.run.class_names)]

        # where the image comes from
        self.image_index = W.BoundedIntText(value=0, min=0, max=0, description=f"{split} image",
                                            layout=W.Layout(width="190px"))
        self.of_class = W.Dropdown(options=[("any class", -1)] + names, value=-1, description="of class",
                                   layout=W.Layout(width="260px"))
        self.upload = W.FileUpload(accept="image/*", multiple=False, description="your image",
                                   layout=W.Layout(width="150px"))
        self.source = W.HTML()
        self.k = k_selector(self.run)
        self._image: Any = image  # what is explained (an index of the split, or an image)

        # the image, and what is drawn on it
        self.picture = image_widget(SIZE)
        self.clicks = Event(source=self.picture, watched_events=["click"])
        self.clicks.on_dom_event(self._on_click)
        self.opacity = W.FloatSlider(value=0.6, min=0.0, max=1.0, step=0.05, description="heatmap",
                                     continuous_update=False, layout=W.Layout(width=f"{SIZE}px"))
        self.prediction = W.HTML(layout=W.Layout(width=f"{SIZE}px"))

        # the decision
        self.target = W.Dropdown(options=names, description="explain", layout=W.Layout(width="330px"))
        self.channel = W.Dropdown(options=[], description="channel", layout=W.Layout(width="330px"))
        self.switch = W.ToggleButton(value=False, description="switch it off", icon="power-off",
                                     tooltip="the decision without this channel (its weights 0 for every class)",
                                     layout=W.Layout(width="150px"))
        self.without = W.HTML(layout=W.Layout(width=f"{SIZE}px"))
        self.waterfall = figure_widget(420)
        self.evidence = W.HTML()
        self.prototypes = image_widget(4 * PROTO + 12, PROTO)
        self.other = W.Dropdown(options=names, description="why not", layout=W.Layout(width="330px"))
        self.versus = figure_widget(380)
        self.point = W.HTML("<div class='idw-note'>click on the image: which channels' winning responses lie "
                            "there?</div>")
        self.cam_images = {name: image_widget(SMALL) for name in ("InfoDisent", *self._cams.methods)}
        self.cam_labels = {name: W.HTML(layout=W.Layout(width=f"{SMALL + 8}px", height="36px"))
                           for name in self.cam_images}

        left = W.VBox([self.picture, self.opacity, self.prediction, self.without, self.point],
                      layout=W.Layout(width=f"{SIZE + 20}px"))
        cams = W.HBox([W.VBox([self.cam_labels[k], self.cam_images[k]]) for k in self.cam_images])
        right = W.VBox([
            W.HBox([self.target, self.channel, self.switch]), self.waterfall,
            W.HTML("<div class='idw-title'>the selected channel</div>"), self.evidence, self.prototypes,
            W.HTML("<div class='idw-title'>beside it, post-hoc maps of the same decision (torchcam, at the "
                   "backbone's last map)</div>"), cams,
        ], layout=W.Layout(width="860px"))
        self.children = [
            W.HTML(CSS + f"<div class='idw-title'>Decision explorer: {esc(self.run.path.name)}</div>"
                   + budget_banner(self.run)),
            W.HBox([self.image_index, self.of_class, self.upload, self.source]), self.k,
            self.messages,
            W.HBox([left, right]),
            W.HBox([self.other], layout=W.Layout(margin="8px 0 0 0")), self.versus,
        ]
        try:
            n_images = len(self.run.dataset(split))
            self.image_index.max = n_images - 1
        except Exception as e:  # noqa: BLE001 - the dataset is not on this machine: uploads still work
            self.image_index.disabled = self.of_class.disabled = True
            self.messages.error(f"the run's {split} images cannot be read here ({e}); upload an image instead")
        self._quiet = False
        on = self._when
        self.image_index.observe(on(lambda ch: self.load(ch["new"])), names="value")
        self.of_class.observe(on(self._pick_class), names="value")
        self.upload.observe(on(self._uploaded), names="value")
        self.target.observe(on(lambda ch: self.explain_class(ch["new"])), names="value")
        self.channel.observe(on(lambda ch: ch["new"] is not None and self.select_channel(ch["new"])), names="value")
        self.opacity.observe(on(lambda _: self.redraw()), names="value")
        self.switch.observe(on(lambda ch: self.selected is not None and self.toggle(self.selected, ch["new"])),
                            names="value")
        self.other.observe(on(lambda ch: self.compare(ch["new"])), names="value")
        self.k.observe(on(lambda ch: ch["new"] is not None and self.use_k(ch["new"])), names="value")
        self.load(int(image) if isinstance(image, (int, np.integer)) else image)  # an index out of range: a message

    # ------------------------------------------------------------------ the image

    @guarded
    def load(self, image: Any, split: str | None = None) -> None:
        """Explain a new image: a dataset index of ``split`` (default: the explorer's), a PIL image or a path.

        Args:
            image: a dataset index of ``split``, a PIL image or a path.
            split: the split a dataset index refers to; the explorer keeps it. Default None: the explorer's."""
        if split is not None and split != self.split:
            self.split = split
            self.image_index.description = f"{split} image"
            with self._quietly():  # a smaller max would clamp the value and load that image
                self.image_index.max = len(self.run.dataset(split)) - 1
        self._image = image
        if isinstance(image, (int, np.integer)) and not isinstance(image, bool):
            expl = self.run.explain(int(image), split=self.split)
            label = expl.label
            self.source.value = (f"<div class='idw-note'>{self.split} image {int(image)}, true class "
                                 f"{esc(self.run.class_names[label]) if label is not None else '?'}</div>")
            if self.image_index.value != int(image):
                self._silent(self.image_index, int(image))
        else:
            expl = self.run.explain(image)
            self.source.value = f"<div class='idw-note'>{esc(expl.sources[0] or 'your image')}</div>"
        self.messages.clear()
        self.clicked, self.point_table = None, None
        self.point.value = "<div class='idw-note'>click on the image: which channels' winning responses lie there?</div>"
        self._features = backbone_maps(self.model, expl)
        self.expl = expl
        self._silent(self.target, expl.predicted)
        self._silent(self.other, int(np.argsort(-expl.logits[0])[1]) if expl.logits.shape[1] > 1 else expl.predicted)
        self.prediction.value = self._prediction()
        self.explain_class(expl.predicted)  # and compares with the second class

    @guarded
    def use_k(self, k: int | str | None) -> None:
        """Explain the same image with another head the run keeps (:meth:`~infodisent.run.Run.with_k`: ``k``
        channels per class, or ``"dense"``); the channels switched off are switched on again (they were the
        other head's choice).

        Args:
            k: a kept head's channels per class, or ``"dense"`` (or None) for the dense reference."""
        self.run = self.run.with_k(k)
        self.model = self.run.model
        self._cams = PosthocCAM(self.model)
        self.off = []
        key = self.run.head_key
        if self.k.value != key:
            self._silent(self.k, key)
        self.load(self._image)
        if not self.run.has_index(self.index_split):
            self.messages.info(f"K={key} has no {self.index_split} prototype index yet: its channels' prototypes "
                               f"appear once it is mined (`infodisent mine` of that head, or the channel browser)")

    @contextmanager
    def _quietly(self) -> Iterator[None]:
        """Change controls inside without running this widget's callbacks (the front end still hears of it)."""
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False

    def _silent(self, control: W.ValueWidget, value: Any) -> None:
        """Set one control's value quietly."""
        with self._quietly():
            control.value = value

    def _when(self, fn):
        """``fn`` as a control's callback, skipped while :meth:`_silent` sets a control."""
        return lambda change: None if self._quiet else fn(change)

    @guarded
    def _pick_class(self, change) -> None:
        c = change["new"]
        if c is None or c < 0:
            return
        labels = np.asarray(self.run.dataset(self.split).labels)
        found = np.flatnonzero(labels == c)
        if len(found) == 0:
            self.messages.error(f"the {self.split} split has no image of class {self.run.class_names[c]}")
            return
        after = found[found > self.image_index.value]
        self.image_index.value = int(after[0] if len(after) else found[0])  # the next one of that class

    @guarded
    def _uploaded(self, change) -> None:
        files = change["new"]
        if not files:
            return
        f = files[0]
        try:
            img = Image.open(io.BytesIO(bytes(f["content"])))
            img.load()
        except Exception as e:  # noqa: BLE001 - whatever PIL raises for a file that is not an image
            raise InputError(f"{f.get('name', 'the file')} is not an image PIL can read ({type(e).__name__})") from None
        self.load(img)  # explain brings it to RGB (datasets.base.to_rgb) like any image
        self.source.value = f"<div class='idw-note'>uploaded: {esc(f.get('name', ''))}</div>"

    def _prediction(self) -> str:
        e = self.expl
        top = e.top5
        rows = [[esc(n), f"{p:.3f}", f"{l:.2f}"] for n, p, l in zip(top["name"], top["probability"], top["logit"])]
        truth = ""
        if e.label is not None:
            ok = e.label == e.predicted
            truth = (f" <span class='{'idw-pos' if ok else 'idw-neg'}'>({'right' if ok else 'wrong'}: true class "
                     f"{esc(e.class_names[e.label])})</span>")
        return (f"<div class='idw-title'>predicted {esc(e.predicted_name)}{truth}</div>"
                + table_html(rows, ["top-5 class", "probability", "logit"]))

    # ------------------------------------------------------------------ the decision

    @guarded
    def explain_class(self, target: int) -> None:
        """Take the decision apart for class ``target``: waterfall, channel list, CAMs.

        Args:
            target: the class explained, by index."""
        if self.expl is None:
            return
        self.expl = self.expl.with_target(int(target))
        if self.target.value != int(target):
            self._silent(self.target, int(target))
        fig = waterfall_figure(self.expl, self.n)
        refresh(self.waterfall, fig)
        for trace in self.waterfall.data:
            trace.on_click(self._waterfall_click, append=False)
        channels = [int(c) for c in fig.data[0].customdata if c >= 0]
        t = self.expl.table().set_index("channel")
        with self._quietly():  # new options reset the value: no callback for that
            self.channel.options = [(f"ch {c}: {t.at[c, 'contribution']:+.3f}", c) for c in channels]
        self._cam_maps = self._cams(self.expl, features=self._features)
        self.select_channel(channels[0] if channels else None)
        if self.clicked is not None:
            self.ask(*self.clicked)
        self.compare(self.other.value)
        self._show_without()

    def _waterfall_click(self, trace, points, state) -> None:
        for i in points.point_inds:
            c = int(trace.customdata[i])
            if c >= 0:
                self.channel.value = c

    @guarded
    def select_channel(self, channel: int | None) -> None:
        """Show one channel: its heatmap and box on the image, its numbers, its prototypes.

        Args:
            channel: the channel, or None for none (when no channel contributes to the class)."""
        if self.expl is None:
            return
        if channel is not None:
            self.expl.channel(int(channel))  # a clear error for a channel out of range, before any change
        chosen = None if channel is None else int(channel)
        self.selected = chosen
        if chosen is not None and self.channel.value != chosen:
            with self._quietly():
                if chosen not in [v for _, v in self.channel.options]:
                    self.channel.options = list(self.channel.options) + [(f"ch {chosen}", chosen)]
                self.channel.value = chosen
        self._silent(self.switch, chosen in self.off)
        self._draw()
        if channel is None:
            self.evidence.value = "<div class='idw-note'>no channel contributes to this class</div>"
            self.prototypes.layout.visibility = "hidden"
            return
        ev = self.expl.channel(self.selected)
        side = "positive" if ev.side == "pos" else "negative"
        self.evidence.value = (
            f"<div class='idw-note'>channel {ev.channel}: contribution {signed(ev.contribution)} to "
            f"{esc(self.expl.target_name)} = W {ev.weight:.3f} × v {ev.value:+.3f} (its {side} side won, in the "
            f"box drawn on the image). Its top {side} prototypes from the {self.index_split} split:</div>")
        try:
            patches = self.run.renderer(self.index_split).prototypes(ev.channel, ev.side, 4)
        except (FileNotFoundError, StaleIndexError) as e:
            self.prototypes.layout.visibility = "hidden"
            self.evidence.value += f"<div class='idw-msg-info'>{esc(e)}</div>"
            return
        self.prototypes.layout.visibility = "visible"
        self.prototypes.value = encode(strip([patch_image(p, "crop", PROTO) for p in patches]) if patches
                                       else Image.new("RGB", (PROTO, PROTO), (255, 255, 255)))

    @guarded
    def toggle(self, channel: int, off: bool = True) -> None:
        """Switch ``channel`` off (or on again) and show at once the decision without the channels that are off
        (:meth:`~infodisent.explain.explanation.Explanation.without`); they stay off for the next images.

        Args:
            channel: the channel.
            off: switch it off; False switches it on again. Default True."""
        if self.expl is None:
            return
        self.expl.channel(int(channel))  # a clear error for a channel out of range
        channel = int(channel)
        if off and channel not in self.off:
            self.off.append(channel)
        elif not off and channel in self.off:
            self.off.remove(channel)
        if self.selected == channel:
            self._silent(self.switch, off)
        self._show_without()

    def _show_without(self) -> None:
        e = self.expl
        if e is None or not self.off:
            self.without.value = ""
            return
        w = e.without(self.off)
        changed = w.predicted != e.predicted
        verdict = (f"<span class='idw-neg'>the prediction changes to {esc(w.predicted_name)}</span>" if changed
                   else f"still {esc(w.predicted_name)}")
        self.without.value = (
            f"<div class='idw-note'>with channel{'s' if len(self.off) > 1 else ''} "
            f"{', '.join(map(str, self.off))} off: {verdict} (p={w.probabilities[0, w.predicted]:.3f}); "
            f"logit of {esc(e.target_name)} {e.logit:.2f} → {w.logit:.2f}</div>")

    def _draw(self) -> None:
        """The main image (selected channel's heatmap, its box, the clicked cell) and the CAM row."""
        e, d = self.expl, self.selected
        view = e.view
        if d is not None:
            ev = self.renderer_evidence(d)
            pic = draw_box(overlay(view, ev.heatmap, alpha=self.opacity.value), ev.box)
        else:
            pic = view.convert("RGB")
        if self.clicked is not None:
            box = cell_box(cell_at(*self.clicked, e.grid, view.size), e.grid, view.size)
            pic = draw_box(pic, box, color=CLICK, width=2)
        self.picture.value = encode(pic.resize((SIZE, SIZE), Image.BICUBIC))
        if d is not None:
            self.cam_images["InfoDisent"].value = encode(pic.resize((SMALL, SMALL), Image.BICUBIC))
            self.cam_labels["InfoDisent"].value = f"<div class='idw-note'>InfoDisent: channel {d}</div>"
        for name, m in self._cam_maps.items():
            self.cam_images[name].value = encode(overlay(view, m, alpha=self.opacity.value).resize((SMALL, SMALL)))
            self.cam_labels[name].value = (f"<div class='idw-note'>{esc(name)} for "
                                           f"{esc(e.target_name)}</div>")

    @guarded
    def redraw(self) -> None:
        """Draw the image and the CAM row again (the opacity changed)."""
        if self.expl is not None:
            self._draw()

    def renderer_evidence(self, channel: int, expl: Explanation | None = None):
        """A channel's evidence (heatmap, box) on the explained image; reads nothing from disk.

        Args:
            channel: the channel.
            expl: the explanation to read it from. Default None: the one shown."""
        return channel_evidence(self.expl if expl is None else expl, channel)

    # ------------------------------------------------------------------ why A, not B

    @guarded
    def compare(self, other: int) -> None:
        """Why the explained class and not ``other``: the channels that separate them.

        Args:
            other: the class compared with, by index (None shows nothing)."""
        if self.expl is None or other is None:
            return
        if int(other) == self.expl.target:
            refresh(self.versus, go.Figure(layout={"title": {"text": "pick a second class, different from the "
                                                                     "explained one, to compare them"}}))
            return
        refresh(self.versus, versus_figure(self.expl, int(other), self.n))

    # ------------------------------------------------------------------ point and ask

    def _on_click(self, event: dict) -> None:
        x, y = event.get("dataX"), event.get("dataY")
        if x is None or y is None:
            return
        if self.expl is None:
            return
        w, h = self.expl.view.size  # the picture shows the view scaled to SIZE x SIZE; its edge pixel maps inside
        self.ask(min(float(x) * w / SIZE, w - 1e-3), min(float(y) * h / SIZE, h - 1e-3))

    @guarded
    def ask(self, x: float, y: float) -> None:
        """The channels whose winning response lies in the cell under view point ``(x, y)``.

        Args:
            x: the point's horizontal coordinate, in view pixels.
            y: its vertical coordinate, in view pixels."""
        if self.expl is None:
            return
        here = self.expl.at(x, y)
        self.clicked = (x, y)
        self._draw()
        counted = here[here["contribution"] != 0]
        pos = int(here["position"].iloc[0]) if len(here) else cell_at(x, y, self.expl.grid, self.expl.view.size)
        r, c = divmod(pos, self.expl.grid[1])
        rows = [[f"ch {int(d)}", s, f"{v:+.3f}", signed(k)] for d, s, v, k in
                zip(counted["channel"][:8], counted["side"][:8], counted["value"][:8], counted["contribution"][:8])]
        total = float(counted["contribution"].sum())
        self.point.value = (
            f"<div class='idw-note'>cell (row {r}, column {c}): {len(here)} channels peak here; "
            f"{len(counted)} count for {esc(self.expl.target_name)}, together {signed(total)} of its logit "
            f"{self.expl.logit:.3f}</div>" + (table_html(rows, ["channel", "side", "v", "contribution"]) if rows else ""))
        self.point_table = here

    # ------------------------------------------------------------------ without a widget manager

    def static(self, target: int | None = None, other: int | None = None, channel: int | None = None) -> StaticView:
        """The explorer's view as pictures and plotly figures (no widgets).

        Args:
            target: the class explained. Default None: the one shown.
            other: a class to compare with, adding the "why not" figure. Default None: no comparison.
            channel: the channel whose heatmap is drawn. Default None: the strongest positive one."""
        e = self.expl if target is None else self.expl.with_target(int(target))
        figures = {"waterfall": waterfall_figure(e, self.n)}
        if other is not None:
            figures["versus"] = versus_figure(e, int(other), self.n)
        d = channel if channel is not None else (int(e.positive.channel[0]) if len(e.positive) else None)
        images = {}
        cams = self._cams(e, features=self._features)
        row = [e.view]
        if d is not None:
            ev = self.renderer_evidence(d, e)
            row = [draw_box(overlay(e.view, ev.heatmap), ev.box)]
        row += [overlay(e.view, m) for m in cams.values()]
        images[f"channel {d} | " + " | ".join(cams)] = strip(row)
        return StaticView(f"{e.target_name}: logit {e.logit:.3f} (predicted {e.predicted_name})", images, figures,
                          [e.coverage().sentence()])


__all__ = ["DecisionExplorer"]
