"""Every loss term against the official SPIdepth trainer itself (runs where SPIDEPTH_OFFICIAL_REPO points at a
checkout of Lavreniuk/SPIdepth, like the model parity test).

The same batch, depth and PoseNet outputs go through the official ``Trainer.generate_images_pred`` +
``compute_losses`` (posecnn PoseNet, monocular: translation scaled by the mean inverse depth, SSIM 7x7, per-pixel
minimum with identity automasking, edge-aware smoothness) and through ours; the losses agree to 1e-5 relative.
The tie-breaking noise both add to the identity errors is zeroed for the comparison, and the official code's
``.cuda()`` calls are made no-ops so it runs on the CPU."""
from __future__ import annotations

import importlib
import sys
import types
from contextlib import contextmanager

import pytest
import torch

from spidepth_ros.tools.official import official_repo
from spidepth_ros.training.config import LossConfig
from spidepth_ros.training.losses import SelfSupervisedLoss
from spidepth_ros.training.warping import pose_from_axis_angle, scale_translation_by_mean_inverse_depth

REPO = official_repo()
pytestmark = pytest.mark.skipif(REPO is None, reason="set SPIDEPTH_OFFICIAL_REPO to a checkout of Lavreniuk/SPIdepth")
B, H, W = 2, 64, 96


@contextmanager
def official_modules():
    """Import the official trainer.py and layers.py with what they import but the loss does not use stubbed."""
    stubs = {name: types.ModuleType(name) for name in ("kornia", "kornia.geometry", "kornia.geometry.depth",
                                                     "datasets", "networks", "six", "six.moves")}
    stubs["kornia.geometry.depth"].depth_to_3d = None
    stubs["six.moves"].urllib = None                  # utils.py's download helpers; the loss does not use them
    saved = {name: sys.modules.get(name) for name in [*stubs, "layers", "utils", "kitti_utils", "trainer"]}
    sys.modules.update({name: module for name, module in stubs.items() if name not in sys.modules
                        or name.startswith(("kornia", "datasets", "networks"))})
    sys.path.insert(0, str(REPO))
    try:
        for name in ("layers", "utils", "kitti_utils", "trainer"):
            sys.modules.pop(name, None)
        yield importlib.import_module("trainer"), importlib.import_module("layers")
    finally:
        sys.path.remove(str(REPO))
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@contextmanager
def deterministic_cpu():
    """No tie-breaking noise (both implementations draw it differently) and .cuda() as a no-op."""
    patches = [(torch, "randn", lambda *s, **k: torch.zeros(*s, **k)),
               (torch, "randn_like", lambda x, **k: torch.zeros_like(x, **k)),
               (torch.Tensor, "cuda", lambda self, *a, **k: self)]
    originals = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, value in patches:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in originals:
            setattr(obj, name, value)


@pytest.mark.parametrize("automask,smoothness", [(True, 1e-3), (False, 1e-3), (True, 0.0)])
def test_losses_equal_the_official_trainer(automask, smoothness):
    g = torch.Generator().manual_seed(0)
    colors = {f: torch.rand(B, 3, H, W, generator=g) for f in (0, -1, 1)}
    depth = 2.0 + 8.0 * torch.rand(B, 1, H, W, generator=g)
    k = torch.eye(4).repeat(B, 1, 1)
    k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2] = 0.58 * W, 1.92 * H, 0.5 * W, 0.5 * H
    inv_k = torch.linalg.inv(k)
    axisangle = {f: 0.02 * torch.randn(B, 1, 1, 3, generator=g) for f in (-1, 1)}
    translation = {f: 0.05 * torch.randn(B, 1, 1, 3, generator=g) for f in (-1, 1)}

    with official_modules() as (official_trainer, layers), deterministic_cpu():
        opt = types.SimpleNamespace(scales=[0], v1_multiscale=False, height=H, width=W, frame_ids=[0, -1, 1],
                                    pose_model_type="posecnn", use_stereo=False, no_ssim=False,
                                    disable_automasking=not automask, avg_reprojection=False, predictive_mask=False,
                                    disparity_smoothness=smoothness)
        fake = types.SimpleNamespace(opt=opt, num_scales=1, ssim=layers.SSIM(),
                                     backproject_depth={0: layers.BackprojectDepth(B, H, W)},
                                     project_3d={0: layers.Project3D(B, H, W)})
        fake.compute_reprojection_loss = types.MethodType(official_trainer.Trainer.compute_reprojection_loss, fake)
        inputs = {("color", f, 0): colors[f] for f in colors}
        inputs.update({("K", 0): k, ("inv_K", 0): inv_k})
        outputs = {("disp", 0): depth}
        for f in (-1, 1):
            outputs[("axisangle", 0, f)] = axisangle[f]
            outputs[("translation", 0, f)] = translation[f]
            outputs[("cam_T_cam", 0, f)] = layers.transformation_from_parameters(
                axisangle[f][:, 0], translation[f][:, 0], invert=(f < 0))
        official_trainer.Trainer.generate_images_pred(fake, inputs, outputs)
        theirs = official_trainer.Trainer.compute_losses(fake, inputs, outputs)["loss"]

        transforms = [pose_from_axis_angle(axisangle[f], scale_translation_by_mean_inverse_depth(translation[f], depth),
                                           invert=(f < 0)) for f in (-1, 1)]
        ours = SelfSupervisedLoss(LossConfig(automask=automask, smoothness=smoothness))(
            depth, colors[0], [colors[-1], colors[1]], transforms, k, inv_k)["loss"]
    assert float(theirs) > 0
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
