"""Adaptation's parts with real frames and real training steps: the keyframe buffer against known camera motion,
the guard against a candidate made worse on purpose, and the worker process end to end (spawned, fed, killed).
The node over DDS: test_node_adaptation.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spidepth_ros.geometry import axis_angle_to_matrix
from spidepth_ros.synth import SynthConfig, render_sequence
from spidepth_ros.training.adaptation import AdaptSettings, KeyframeBuffer, Worker

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "models" / "demo_small.pt"
# the demo preset's input size; a forward-driving synthetic camera rendered at it
WIDTH, HEIGHT = 320, 96
DRIVE = SynthConfig(width=WIDTH, height=HEIGHT, frames=40, seed=11, speed=4.0)


@pytest.fixture(scope="module")
def frames():
    return list(render_sequence(DRIVE))


def settings_for(tmp_path, **kw) -> AdaptSettings:
    k = DRIVE.intrinsics.normalized()
    return AdaptSettings(model_path=str(DEMO), out_dir=str(tmp_path / "adapted"), width=WIDTH, height=HEIGHT,
                         k_normalized=tuple(map(tuple, k.tolist())), threads=2, **kw)


def test_buffer_keeps_translation_not_rotation_and_holds_out_targets(frames):
    """A camera that only turns (each frame the previous one warped by the homography K R K^-1 of 1 degree)
    adds no keyframe after the first; the driving sequence adds keyframes whose measured parallax reaches the
    target; the buffer stays within its capacity; held-out keyframes are never training targets."""
    import cv2

    k = DRIVE.intrinsics.matrix()
    turning = KeyframeBuffer(k, 1.2, capacity=10, holdout_every=3)
    image = frames[0].rgb
    for i in range(8):
        h = k @ axis_angle_to_matrix(np.array([0.0, np.radians(1.0) * i, 0.0])) @ np.linalg.inv(k)
        turning.offer(cv2.warpPerspective(image, h, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR), i)
    assert len(turning) == 1 and turning.offered == 8

    driving = KeyframeBuffer(k, 1.2, capacity=10, holdout_every=3)
    kept = [driving.offer(f.rgb, f.stamp_ns) for f in frames]
    assert 10 <= sum(kept) < len(frames)                      # some frames too close to the last keyframe
    assert len(driving) == 10                                   # bounded: the oldest were dropped
    parallax = [kf.parallax_px for kf in list(driving.keyframes)[1:]]
    assert min(parallax) >= 1.2
    train, held = driving.triplets()
    assert held and train and len(train) + len(held) == 8
    held_targets = {t for _, _, t, _ in held}
    assert all(driving.held_out(driving.keyframes[t]) for t in held_targets)
    assert not held_targets & {t for _, _, t, _ in train}
    store = driving.frame_store(DRIVE.intrinsics.normalized())
    assert store.frames.shape == (10, HEIGHT, WIDTH, 3) and np.isfinite(store.rotation_vec[:-1]).all()


def _decoder_params(worker) -> list[torch.Tensor]:
    return [p.detach().clone() for p in worker.trainer.depth_net.depth_decoder.parameters()]


def test_worker_trains_and_the_guard_rejects_a_candidate_made_worse_on_purpose(frames, tmp_path):
    """Real training steps on the buffer move the depth network; a candidate whose depth is flattened on purpose
    (decoder weights zeroed: a constant map) is rejected with the reason and the network goes back to the
    accepted weights exactly."""
    worker = Worker(settings_for(tmp_path, batch_size=2, min_train_triplets=2))
    for f in frames[:24]:
        worker.offer(f.rgb, f.stamp_ns)
    assert worker.ready()
    before = _decoder_params(worker)
    worker.train_step()
    worker.train_step()
    moved = max(float((a - b).abs().max()) for a, b in zip(_decoder_params(worker), before))
    assert moved > 0                                            # a real step changed the weights
    good = worker.judge()
    if good.accepted:                                           # two steps may or may not improve held-out error;
        reference = _decoder_params(worker)                     # either way the reference is what is kept now
    else:
        reference = before
    with torch.no_grad():
        for p in worker.trainer.depth_net.depth_decoder.parameters():
            p.zero_()
    bad = worker.judge()
    assert not bad.accepted
    assert "photometric" in bad.reason or "spread" in bad.reason
    assert bad.photometric_candidate > bad.photometric_current or bad.spread_candidate < bad.spread_current
    restored = _decoder_params(worker)
    assert all(torch.equal(a, b) for a, b in zip(restored, reference))
    status = worker.status()
    assert status["rejected"] >= 1 and status["steps"] == 2 and status["keyframes"] == len(worker.buffer)


def test_worker_process_hands_back_a_loadable_model_and_dies_cleanly(frames, tmp_path):
    """The spawned worker receives frames through the queue, trains, and announces an accepted model file that
    the torch backend loads; killed, it is reported stopped with its exit code."""
    from spidepth_ros.adaptation import AdaptationProcess, wait_for
    from spidepth_ros.runtime import create_estimator

    # a tolerant guard so that the first candidate is accepted (the guard's rejections are tested above)
    settings = settings_for(tmp_path, batch_size=2, min_train_triplets=2, steps_per_candidate=2,
                            photometric_tolerance=1.0, min_spread_ratio=0.0, max_scale_drift=10.0, max_share=1.0)
    process = AdaptationProcess(settings)
    try:
        assert wait_for(lambda: process.poll() is not None and process.state.state == "collecting", 120.0), \
            process.state                                   # the worker has started (torch imported, model built)
        for i, f in enumerate(frames[:24]):
            process.offer(f.rgb, f.stamp_ns)
            # none dropped (the test needs them all): wait until the worker has taken this one
            assert wait_for(lambda: process.poll() is not None and
                            process.state.worker.get("frames_offered", 0) > i, 120.0), process.state
        models: list[str] = []
        assert wait_for(lambda: bool(models.extend(process.poll()) or models), 240.0), process.state
        depths = []
        for model in (models[0], DEMO):
            estimator = create_estimator(model, "torch", "cpu")
            estimator.start()
            depths.append(estimator.infer(frames[30].rgb).depth)
            estimator.stop()
        adapted, demo = depths
        assert adapted.shape == demo.shape and np.isfinite(adapted).all()
        assert float(np.abs(adapted - demo).max()) > 0                # the adapted weights, not the demo's
        assert process.state.accepted >= 1 and process.state.state == "adapting"
        process.process.kill()
        process.process.join(10)
        process.poll()
        assert process.state.state == "stopped" and "code" in process.state.detail
    finally:
        process.stop()
