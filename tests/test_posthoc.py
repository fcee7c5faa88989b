"""The post-hoc CAM reference (infodisent.explain.posthoc), computed from an explanation."""

import numpy as np
import pytest
import torch

from infodisent.explain.posthoc import PosthocCAM, backbone_maps


def test_gradcam_is_computed_from_the_explanation_without_a_second_backbone_pass(run):
    e = run.explain(2)
    model = run.model
    x = model.transform(run.dataset("test").load_image(2))[None]
    with torch.no_grad():
        F_ = model.backbone(x)
    torch.testing.assert_close(backbone_maps(model, e), F_, rtol=1e-4, atol=1e-4)  # F = U^T J

    cams = PosthocCAM(model)
    for target in (0, 3):
        maps = cams(e, target)
        assert set(maps) == {"Grad-CAM", "Grad-CAM++"}
        assert maps["Grad-CAM"].shape == e.view.size[::-1]
        # Grad-CAM by hand: gradient-averaged channel weights, ReLU of the weighted sum, scaled to [0, 1]
        f = F_.clone().requires_grad_(True)
        logit = model.head(f)[0, target]
        (g,) = torch.autograd.grad(logit, f)
        cam = torch.relu((g.mean((2, 3), keepdim=True) * f).sum(1))[0].detach()
        cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-8)
        up = torch.nn.functional.interpolate(cam[None, None], size=e.view.size[::-1], mode="bilinear",
                                             align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(maps["Grad-CAM"], up, atol=2e-3)
    with pytest.raises(ValueError, match="unknown CAM method"):
        PosthocCAM(model, ["Score-CAM"])
