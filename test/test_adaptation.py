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
    # the last step's weights are the candidate (no averaging): the zeroed decoder below is what is judged
    worker = Worker(settings_for(tmp_path, batch_size=2, min_train_triplets=2, ema_decay=0.0))
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


def test_an_accepted_candidate_keeps_the_published_metric_scale(frames, tmp_path):
    """Monocular training moves the network's scale freely; an accepted model is written with the START model's
    depth_scale divided by the whole change since the start (the median over the buffer's keyframes of each
    frame's candidate / start median depth, measured anew at each swap on the buffer of that moment, not the
    product of the per-swap changes), so that after two swaps the node's published depth (network output x
    depth_scale, through the torch backend) keeps its per-frame medians on those keyframes, while the raw outputs
    moved by that change. Without the correction the published medians move with it."""
    from spidepth_ros.runtime import create_estimator
    from spidepth_ros.training.adaptation import write_model

    worker = Worker(settings_for(tmp_path, batch_size=2, min_train_triplets=2, photometric_tolerance=10.0,
                                 min_spread_ratio=0.0, learning_rate=1e-3, ema_decay=0.0, scale_anchor=0.0))
    start_scale = worker.depth_scale
    for f in frames[:20]:
        worker.offer(f.rgb, f.stamp_ns)
    for _ in range(3):
        worker.train_step()
    first = worker.judge()
    assert first.accepted and first.scale_ratio_start == pytest.approx(first.scale_ratio, rel=1e-4), first
    for f in frames[20:32]:                    # the buffer grows: the second swap measures on more keyframes
        worker.offer(f.rgb, f.stamp_ns)
    for _ in range(3):
        worker.train_step()
    report = worker.judge()
    assert report.accepted and abs(report.scale_ratio_start - 1) > 0.05, report     # the scale did move
    assert worker.depth_scale == pytest.approx(start_scale / report.scale_ratio_start)
    adapted = write_model(worker.trainer, tmp_path / "adapted.pt", False, worker.depth_scale)
    measured = [worker.buffer.keyframes[i].rgb for i in worker.scale_indices()]   # the guard's scale frames
    assert len(measured) == min(len(worker.buffer), worker.settings.scale_frames) and len(measured) > 5
    medians = {}
    for name, model in (("start", DEMO), ("adapted", adapted)):
        estimator = create_estimator(model, "torch", "cpu")
        estimator.start()
        raw = np.array([np.median(estimator.infer(rgb).depth) for rgb in measured])
        medians[name] = (raw, raw * estimator.metadata.depth_scale)
        estimator.stop()
    raw_ratio = float(np.median(medians["adapted"][0] / medians["start"][0]))
    published_ratio = float(np.median(medians["adapted"][1] / medians["start"][1]))
    assert raw_ratio == pytest.approx(report.scale_ratio_start, rel=0.03), (raw_ratio, report.scale_ratio_start)
    assert published_ratio == pytest.approx(1.0, abs=0.03), published_ratio


def polled(process):
    """The worker's messages read; its state."""
    process.poll()
    return process.state


def test_worker_process_hands_back_a_loadable_model_and_dies_cleanly(frames, tmp_path):
    """The spawned worker receives frames through the queue, trains, and announces accepted model files that
    the torch backend loads, holding the accepted (averaged) weights its saved state names; killed, it is
    reported stopped with its exit code."""
    from spidepth_ros.adaptation import AdaptationProcess, wait_for
    from spidepth_ros.checkpoint import load_weights, safe_torch_load
    from spidepth_ros.runtime import create_estimator
    from spidepth_ros.training.adaptation import STATE_KEY

    # a tolerant guard so that the first candidate is accepted (the guard's rejections are tested above)
    settings = settings_for(tmp_path, batch_size=2, min_train_triplets=2, steps_per_candidate=2,
                            photometric_tolerance=1.0, min_spread_ratio=0.0, max_scale_change=100.0, max_share=1.0)
    process = AdaptationProcess(settings)
    try:
        assert wait_for(lambda: polled(process).state == "collecting", 120.0), \
            process.state                                   # the worker has started (torch imported, model built)
        for i, f in enumerate(frames[:24]):
            process.offer(f.rgb, f.stamp_ns)
            # none dropped (the test needs them all): wait until the worker has taken this one (it takes frames
            # between training steps and guard verdicts, which on a loaded 2-core machine took over 120 s)
            assert wait_for(lambda: polled(process).worker.get("frames_offered", 0) > i, 300.0), process.state
        models: list[str] = []
        assert wait_for(lambda: bool(polled(process) and models.extend(process.take()[0]) or models), 240.0), \
            process.state
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
        # the announced files hold the ACCEPTED weights (the moving average), not the trained ones the worker
        # goes on from: the saved state carries both, and the accepted ones must be one of the announced files
        request = process.request_save(str(tmp_path / "state.pt"))
        assert wait_for(lambda: request in polled(process).saves, 240.0), process.state
        saved_path, error = process.state.saves[request]
        assert not error
        models.extend(process.take()[0])
        saved = load_weights(Path(saved_path))
        trained = safe_torch_load(Path(saved_path))[STATE_KEY]["trained"]
        accepted = {k: v for k, v in saved.depth_state_dict().items() if v.is_floating_point()}
        assert max(float((trained[k] - v).abs().max()) for k, v in accepted.items()) > 0
        matches = [m for m in models if all(torch.equal(load_weights(Path(m)).depth_state_dict()[k], v)
                                            for k, v in accepted.items())]
        assert len(matches) == 1, f"{len(models)} announced files, {len(matches)} hold the accepted weights"
        assert load_weights(Path(matches[0])).extra["depth_scale"] == pytest.approx(saved.extra["depth_scale"])
        process.process.kill()
        process.process.join(10)
        process.poll()
        assert process.state.state == "stopped" and "code" in process.state.detail
    finally:
        process.stop()


def _all_params(worker) -> list[torch.Tensor]:
    return [p.detach().clone() for net in (worker.trainer.depth_net, worker.trainer.pose_net)
            for p in net.parameters()]


def test_saved_adaptation_state_resumes_exactly(frames, tmp_path):
    """Worker.save_state writes the accepted weights with the optimiser, counters, RNGs and keyframes; a worker
    started from that file continues: same counters and keyframes, and its next training step gives the same
    parameters, to the bit, as the saved worker's next step (Adam's moments included: a fresh optimiser's first
    step differs). A plain model file starts a new adaptation."""
    import dataclasses

    from spidepth_ros.checkpoint import load_weights

    s = settings_for(tmp_path, batch_size=2, min_train_triplets=2, photometric_tolerance=1.0, min_spread_ratio=0.0,
                     max_scale_change=100.0)
    a = Worker(s)
    for f in frames[:24]:
        a.offer(f.rgb, f.stamp_ns)
    a.train_step()
    a.train_step()
    assert a.judge().accepted                                   # the tolerant guard takes it
    path = a.save_state(tmp_path / "adapted" / "adapted_state.pt")
    assert load_weights(path).preset.name == a.trainer.preset.name      # also a model file the node runs
    assert (path.parent / "config.yaml").is_file()

    b = Worker(dataclasses.replace(s, model_path=str(path)))
    assert (b.steps, b.accepted, b.rejected) == (2, 1, 0) and "at step 2 with" in b.resumed, b.resumed
    assert [k.serial for k in b.buffer.keyframes] == [k.serial for k in a.buffer.keyframes]
    assert all(np.array_equal(x.rgb, y.rgb) for x, y in zip(a.buffer.keyframes, b.buffer.keyframes))
    assert b.buffer.triplets() == a.buffer.triplets()
    saved = _all_params(a)
    assert all(torch.equal(x, y) for x, y in zip(saved, _all_params(b)))
    rng = torch.get_rng_state()                                 # b's start restored the saved torch RNG
    a.train_step()
    torch.set_rng_state(rng)
    b.train_step()
    after_a, after_b = _all_params(a), _all_params(b)
    assert max(float((x - y).abs().max()) for x, y in zip(after_a, saved)) > 0      # the step moved them
    assert all(torch.equal(x, y) for x, y in zip(after_a, after_b))

    fresh = Worker(dataclasses.replace(s, model_path=str(DEMO)))
    assert fresh.steps == 0 and fresh.resumed == "" and len(fresh.buffer) == 0


def _depth_params(state: dict, worker) -> dict:
    """The depth network's trainable parameters (by name) out of a state dict."""
    names = {name for name, _ in worker.trainer.depth_net.named_parameters()}
    return {k: v.detach().clone() for k, v in state.items() if k in names}


def test_weight_averaging_judges_the_average_and_trains_on(frames, tmp_path):
    """With ``ema_decay`` d the candidate is the exponential moving average of the trained weights, computed here
    independently from the weights after each step (avg_n = d avg_(n-1) + (1 - d) w_n, avg_0 = the start): an
    accepted candidate is that average, while training continues from the trained weights w_n; a rejection goes
    back to the accepted point (trained weights and average both); a saved state resumes with the trained
    weights, not the published average."""
    import dataclasses

    decay = 0.8
    s = settings_for(tmp_path, batch_size=2, min_train_triplets=2, photometric_tolerance=10.0, min_spread_ratio=0.0,
                     max_scale_change=100.0, ema_decay=decay, learning_rate=1e-3)
    worker = Worker(s)
    for f in frames[:24]:
        worker.offer(f.rgb, f.stamp_ns)
    net = worker.trainer.depth_net
    expected = _depth_params(net.state_dict(), worker)
    for _ in range(3):
        worker.train_step()
        trained = _depth_params(net.state_dict(), worker)
        expected = {k: decay * v + (1 - decay) * trained[k] for k, v in expected.items()}
    gap = max(float((expected[k] - trained[k]).abs().max()) for k in trained)
    assert gap > 1e-4                                           # the average is not the last step's weights
    assert worker.judge().accepted                              # the tolerant guard takes it
    published = _depth_params(worker.current_state, worker)
    assert all(torch.allclose(published[k], expected[k], rtol=1e-4, atol=1e-6) for k in expected)
    now = _depth_params(net.state_dict(), worker)
    assert all(torch.equal(now[k], trained[k]) for k in trained)             # training goes on from w_n
    from spidepth_ros.checkpoint import load_weights

    written = load_weights(worker.write_accepted(tmp_path / "adapted" / "adapted_0001.pt"))   # what the node loads
    assert all(torch.equal(written.depth_state_dict()[k], published[k]) for k in published)  # the average
    assert written.extra["depth_scale"] == pytest.approx(worker.depth_scale)
    now = _depth_params(net.state_dict(), worker)
    assert all(torch.equal(now[k], trained[k]) for k in trained)
    path = worker.save_state(tmp_path / "adapted" / "adapted_state.pt")

    worker.train_step()                                         # then a candidate the guard must refuse:
    for key, value in worker.average.items():                   # the average's decoder zeroed (a constant map)
        if key.startswith("depth_decoder.") and value.is_floating_point():
            value.zero_()
    worker.settings = dataclasses.replace(s, photometric_tolerance=0.0, min_spread_ratio=0.7)
    assert not worker.judge().accepted
    back = _depth_params(net.state_dict(), worker)
    assert all(torch.equal(back[k], trained[k]) for k in trained)            # the accepted point's w_n
    average = _depth_params(worker.average, worker)
    assert all(torch.equal(average[k], published[k]) for k in published)

    resumed = Worker(dataclasses.replace(s, model_path=str(path)))
    assert all(torch.equal(v, published[k]) for k, v in _depth_params(resumed.current_state, resumed).items())
    # the published scale's reference survives the restart: the start model's depth_scale, not the saved file's
    assert resumed.start_depth_scale == worker.start_depth_scale != resumed.depth_scale
    weights = _depth_params(resumed.trainer.depth_net.state_dict(), resumed)
    assert all(torch.equal(weights[k], trained[k]) for k in trained)


def test_the_flattening_rule_is_anchored_to_the_start_model(frames, tmp_path):
    """A run of candidates each a little flatter than the last must not walk into a collapse: with the running
    model already flat (decoder zeroed: a constant map, as if accepted step by step) an equally flat candidate is
    rejected, because the spread is compared with the start model's on the same held-out frames, not with the
    running model's. The start model's spread is checked against the torch backend's depth of those frames."""
    import copy

    from spidepth_ros.runtime import create_estimator

    worker = Worker(settings_for(tmp_path, batch_size=2, min_train_triplets=2, photometric_tolerance=10.0,
                                 ema_decay=0.0))      # the network as set here is the candidate
    for f in frames[:24]:
        worker.offer(f.rgb, f.stamp_ns)
    assert worker.ready()
    with torch.no_grad():
        for p in worker.trainer.depth_net.depth_decoder.parameters():
            p.zero_()
    worker.current_state = copy.deepcopy(worker.trainer.depth_net.state_dict())
    report = worker.judge()
    assert report.spread_current == pytest.approx(report.spread_candidate, rel=1e-3)    # as flat as the running
    assert report.spread_candidate < 1.5                                                  # a collapse
    assert not report.accepted and "start model" in report.reason, report

    _, held = worker.buffer.triplets()
    targets = [worker.buffer.keyframes[t].rgb for _, _, t, _ in held[-worker.settings.guard_triplets:]]
    with create_estimator(DEMO, "torch", "cpu") as estimator:
        depth = np.concatenate([estimator.infer(rgb).depth.ravel() for rgb in targets])
    p5, p95 = np.percentile(depth, [5, 95])
    assert report.spread_start == pytest.approx(p95 / p5, rel=0.05), (report.spread_start, p95 / p5)


def test_a_negative_tolerance_asks_for_an_improvement(frames, tmp_path):
    """With photometric_tolerance -0.1 a candidate must lower the held-out photometric error by 10 %: one
    identical to the running model (no training step: the same error up to the refinement's float noise) is
    rejected with that reason; with a tolerance of +1 % the same candidate passes."""
    import dataclasses

    s = settings_for(tmp_path, batch_size=2, min_train_triplets=2, ema_decay=0.0, photometric_tolerance=-0.1)
    worker = Worker(s)
    for f in frames[:24]:
        worker.offer(f.rgb, f.stamp_ns)
    report = worker.judge()
    assert report.photometric_candidate == pytest.approx(report.photometric_current, rel=1e-4)
    assert not report.accepted and "10% improvement" in report.reason, report
    worker.settings = dataclasses.replace(s, photometric_tolerance=0.01)
    assert worker.judge().accepted


def test_the_scale_anchor_holds_each_frames_scale_to_the_start_model(frames, tmp_path):
    """``losses.scale_anchor_loss`` by formula (maps scaled by s cost the mean of log(s)^2 against their own mean
    log depth); in the worker, each step's anchor loss compares its depth with the start weights' mean log depth
    of the batch's own augmented targets (recomputed here with the start weights loaded back into the trainer's
    network); and
    with the anchor, the same seeded steps move the training frames' scales less than without it."""
    from spidepth_ros.training.losses import mean_log_depth, scale_anchor_loss

    depth = torch.rand(3, 1, 8, 10) + 0.5
    reference = torch.from_numpy(np.log(depth.numpy()).reshape(3, -1).mean(axis=1))
    factors = np.array([2.0, 0.5, 1.0])
    scaled = depth * torch.tensor(factors, dtype=torch.float32).view(3, 1, 1, 1)
    assert float(scale_anchor_loss(scaled, reference)) == pytest.approx(np.mean(np.log(factors) ** 2), rel=1e-4)

    def shifts(anchor: float) -> np.ndarray:
        """|change of mean log depth| per keyframe after 12 steps (eval mode, as published)."""
        worker = Worker(settings_for(tmp_path / f"a{anchor}", batch_size=2, min_train_triplets=2,
                                     scale_anchor=anchor))
        for f in frames[:24]:
            worker.offer(f.rgb, f.stamp_ns)
        net, images = worker.trainer.depth_net, worker.scale_images()
        # the Self Query head's transformer has dropout (as upstream, and in its attention too): off in both
        # networks, so that the train-mode reference can be recomputed exactly
        for module in [*net.modules(), *(worker.trainer.anchor_net.modules() if anchor else [])]:
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            elif isinstance(module, torch.nn.MultiheadAttention):
                module.dropout = 0.0
        start = {k: v.clone() for k, v in net.state_dict().items()}
        steps = []                      # (batch, weights the step started from, its output)

        def recording_step(batch, original=worker.trainer.train_step):
            weights = {k: v.clone() for k, v in net.state_dict().items()}
            out = original(batch)
            steps.append((batch, weights, out))
            return out

        worker.trainer.train_step = recording_step
        net.eval()
        with torch.no_grad():
            before = mean_log_depth(worker.trainer.predict_depth(images))
        net.train()
        while worker.steps < 12:
            worker.train_step()
        net.eval()
        with torch.no_grad():
            after = mean_log_depth(worker.trainer.predict_depth(images))
        net.train()
        batch, weights, out = steps[-1]
        if anchor:     # the last step's anchor loss: its depth against the START weights' on its own targets
            last = batch["target_aug"]
            with torch.no_grad():
                trained = {k: v.clone() for k, v in net.state_dict().items()}
                net.load_state_dict(weights)
                depth = worker.trainer.predict_depth(last)
                net.load_state_dict(start)
                reference = mean_log_depth(worker.trainer.predict_depth(last))
                net.load_state_dict(trained)
            # train mode, as the trained network runs (eval mode differs by ~0.04 here). A reference from the
            # trained network itself would make this loss zero, without a gradient: this comparison catches that
            expected = float(((mean_log_depth(depth) - reference) ** 2).mean())
            assert expected > 1e-6
            assert float(out["scale_anchor"]) == pytest.approx(expected, rel=1e-3, abs=1e-7)
        else:
            assert "scale_anchor" not in out
        return (after - before).abs().numpy()

    # unanchored, 20 steps moved these frames' scale by ~0.58 in log (1.8x; anchor 1: 0.09, eval mode)
    free, anchored = shifts(0.0), shifts(1.0)
    assert np.median(free) > 0.1, free
    assert np.median(anchored) < 0.5 * np.median(free), (anchored, free)
