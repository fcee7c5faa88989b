"""Frozen timm backbones as feature-map extractors (the map adapter).

One function, :func:`feature_map`, turns the output of any timm model's
``forward_features`` into the ``(B, D, H, W)`` map InfoDisent rotates
(DESIGN.md §1); :class:`Backbone` wraps a frozen timm model with its data
transform, read from the model's own configuration. Building one and loading
its weights is :func:`infodisent.core.weights.load_backbone`'s job.

Example:
    >>> bb = load_backbone("tf_efficientnet_lite0", weights="offline")
    >>> x = bb.transform(pil_image).unsqueeze(0)
    >>> bb(x).shape
    torch.Size([1, 1280, 7, 7])
"""

from __future__ import annotations

from typing import Any, Callable

import timm
import torch
from torch import nn

from ..errors import InfodisentError
from ..records.model import WeightsSource


class BackboneError(InfodisentError, ValueError):
    """A backbone name or weights source that cannot be used."""


def feature_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The final spatial feature map of a timm model as ``(B, D, H, W)``.

    - CNNs (ResNet, DenseNet, EfficientNet, ...): the map ``forward_features`` returns.
    - ConvNeXt and other models whose head starts with a norm over channels
      (``head.norm``): that map passed through the head's norm, per position.
    - ViT/DeiT: the tokens after the final norm (``fc_norm`` for models that
      normalise after pooling), prefix tokens dropped, reshaped to the patch grid.
    - Swin and other NHWC models (``output_fmt == "NHWC"``): permuted to NCHW.

    Args:
        model: the timm model.
        x: preprocessed images ``(B, 3, S, S)``.
    """
    return _as_map(model, model.forward_features(x), x.shape[-2:])


def _as_map(model: nn.Module, f: torch.Tensor | list | tuple, image_hw: torch.Size) -> torch.Tensor:
    """:func:`feature_map` of what ``forward_features`` returned."""
    if isinstance(f, (list, tuple)):
        f = f[-1]
    if f.ndim == 3:
        return _tokens_to_map(model, f, image_hw)
    if f.ndim != 4:
        raise BackboneError(
            f"{type(model).__name__}.forward_features returned shape {tuple(f.shape)}; "
            "expected a 4-D map or 3-D tokens"
        )
    if str(getattr(model, "output_fmt", "NCHW")) in ("NHWC", "Format.NHWC"):
        f = f.permute(0, 3, 1, 2)
    head_norm = getattr(getattr(model, "head", None), "norm", None)
    if isinstance(head_norm, nn.Module) and not isinstance(head_norm, nn.Identity):
        f = head_norm(f)
    return f.contiguous()


def _tokens_to_map(model: nn.Module, tokens: torch.Tensor, image_hw: torch.Size) -> torch.Tensor:
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    tokens = tokens[:, prefix:]
    norm = getattr(model, "norm", None)
    fc_norm = getattr(model, "fc_norm", None)
    if isinstance(norm, nn.Identity) and isinstance(fc_norm, nn.Module) and not isinstance(fc_norm, nn.Identity):
        tokens = fc_norm(tokens)
    n = tokens.shape[1]
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is not None:
        gh, gw = image_hw[0] // patch[0], image_hw[1] // patch[1]
    else:
        gh = gw = int(round(n**0.5))
    if gh * gw != n:
        raise BackboneError(f"cannot arrange {n} tokens on a grid for input {tuple(image_hw)}")
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], gh, gw)


class Backbone(nn.Module):
    """A frozen timm model with its data transform and feature-map function.

    The timm model is kept whole (``.model``), its own classifier included, so
    pretrained weights can still be checked against ImageNet.
    """

    def __init__(self, model: nn.Module, name: str, weights: WeightsSource, data_config: dict[str, Any],
                 model_kwargs: dict[str, Any] | None = None, *,
                 feature_shape: tuple[int, int, int] | None = None, classifier_reads_map: bool | None = None,
                 asked_kwargs: dict[str, Any] | None = None):
        """Args:
            model: the timm model (frozen here: no gradients, eval mode).
            name: its timm name.
            weights: where its weights came from.
            data_config: timm's data config (input size, mean, std, interpolation, crop).
            model_kwargs: ``timm.create_model``'s extra arguments. Default None.
            feature_shape: ``(D, H, W)`` of the map at the input size, as a run's ``config.json`` recorded it.
                Default None: one forward of a blank image finds it.
            classifier_reads_map: whether the model's classifier reads that map (CNNs), as recorded. Default
                None: the same forward finds it.
            asked_kwargs: the extra arguments the user asked for, without those the weights implied (a
                fine-tuned file's classifier size): what a run records, so that it reopens with another file.
                Default None: ``model_kwargs``.
        """
        super().__init__()
        self.model = model
        self.name = name
        self.model_kwargs = dict(model_kwargs or {})  # timm.create_model's extra arguments (part of cache keys)
        self.asked_kwargs = dict(asked_kwargs if asked_kwargs is not None else self.model_kwargs)
        self.weights = weights
        self.data_config = dict(data_config)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        if feature_shape is None or classifier_reads_map is None:
            feature_shape, classifier_reads_map = self._probe()
        self._feature_shape: tuple[int, int, int] = tuple(int(n) for n in feature_shape)  # type: ignore[assignment]
        self.num_features = int(self._feature_shape[0])
        self.classifier_reads_map = bool(classifier_reads_map)

    @torch.no_grad()
    def _probe(self) -> tuple[tuple[int, int, int], bool]:
        """One forward of a blank image: the map's ``(D, H, W)``, and whether the model's classifier reads the
        map as it is (CNNs: the map is ``forward_features``' own output)."""
        p = next(self.model.parameters())
        x = torch.zeros(1, *self.data_config["input_size"], device=p.device, dtype=p.dtype)
        raw = self.model.forward_features(x)
        f = _as_map(self.model, raw, x.shape[-2:])
        reads = isinstance(raw, torch.Tensor) and raw.shape == f.shape and bool(torch.equal(raw, f)) \
            and hasattr(self.model, "forward_head")
        return tuple(f.shape[1:]), reads  # type: ignore[return-value]

    @property
    def num_classifier_classes(self) -> int:
        """How many classes the model's own classifier has (0: none)."""
        return int(getattr(self.model, "num_classes", 0) or 0)

    @torch.no_grad()
    def classify(self, maps: torch.Tensor) -> torch.Tensor:
        """The model's own classifier on feature maps of :meth:`forward` (only where
        ``classifier_reads_map``: CNNs, whose map is ``forward_features``' output).

        Args:
            maps: feature maps ``(B, D, H, W)``.
        Returns:
            The classifier's logits ``(B, num_classifier_classes)``, in float32."""
        if not self.classifier_reads_map:
            raise BackboneError(f"{self.name}'s classifier does not read the feature map InfoDisent uses "
                                "(tokens, a head norm or NHWC); run the model on the images instead")
        return self.model.forward_head(maps.to(next(self.model.parameters()).dtype)).float()

    def feature_shape(self) -> tuple[int, int, int]:
        """``(D, H, W)`` of the feature map at the configured input size (probed once, at construction)."""
        return self._feature_shape

    def train(self, mode: bool = True) -> "Backbone":
        """The backbone stays in eval mode: its BatchNorm statistics are frozen.

        Args:
            mode: ignored (``nn.Module.train``'s argument). Default True."""
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map of a batch, without gradients.

        Args:
            x: preprocessed images ``(B, 3, S, S)``.
        Returns:
            The map ``(B, D, H, W)``."""
        return self.map_with_grad(x)

    def map_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map as :meth:`forward` gives it, with autograd where it is enabled (the gradient
        attribution methods need the input's gradient; the backbone's weights stay frozen).

        Args:
            x: preprocessed images ``(B, 3, S, S)``.
        """
        if x.device.type == "cpu" and x.dim() == 4:
            # oneDNN's preferred layout on CPUs: faster convolutions, the same map to float rounding
            x = x.contiguous(memory_format=torch.channels_last)
        return feature_map(self.model, x).contiguous()

    @property
    def transform(self) -> Callable:
        """The evaluation transform (resize, centre crop, normalise) from the data config."""
        return timm.data.create_transform(**self.data_config, is_training=False)

    def train_transform(self) -> Callable:
        """timm's training augmentation (random resized crop, flip) at the same size."""
        cfg = {k: v for k, v in self.data_config.items() if k not in ("crop_pct", "crop_mode")}
        return timm.data.create_transform(**cfg, is_training=True, no_aug=False, hflip=0.5)

    def normalization(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The transform's mean and std as (3, 1, 1) tensors: ``pixels = x * std + mean``."""
        mean, std = self.data_config["mean"], self.data_config["std"]
        return torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]

    def inference_batch_size(self, device: str | torch.device, cap: int = 512, budget: float = 0.5) -> int | None:
        """On CUDA, the batch for passes without gradients (feature extraction, evaluation, mining): the
        largest power of two up to ``cap`` whose activations, measured on a batch of 8 in inference mode
        in float32 (the extraction's precision; bf16 needs less), fill at most ``budget`` of the free
        memory. None elsewhere (keep the batch asked).

        Args:
            device: the device the passes run on (the backbone is moved there).
            cap: the largest batch returned. Default 512.
            budget: the fraction of the device's free memory the activations may fill. Default 0.5."""
        device = torch.device(device)
        if device.type != "cuda":
            return None
        self.to(device)
        free, _ = torch.cuda.mem_get_info(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        x = torch.zeros(8, *self.data_config["input_size"], device=device)
        with torch.inference_mode():
            self(x)
        per_image = max(1, (torch.cuda.max_memory_allocated(device) - before) // 8)
        fits = max(1, int(budget * free // per_image))
        return max(8, min(cap, 1 << (fits.bit_length() - 1)))

    @property
    def transform_id(self) -> str:
        """A stable description of the evaluation transform (for cache keys)."""
        keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
        return repr({k: _plain(self.data_config.get(k)) for k in keys})


def _plain(v: Any) -> Any:
    return tuple(float(x) if isinstance(x, float) else x for x in v) if isinstance(v, (list, tuple)) else v
