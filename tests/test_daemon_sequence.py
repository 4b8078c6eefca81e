"""The robot's LSTM state follows exactly the sequence the recording keeps (issue 12.4).

Training replays a recorded episode from a zero state, and ``malpi rl robot`` takes the behaviour
policy's probabilities from the recording. Both hold only if the policy on the car stepped on
exactly the recorded steps: replayed through the sequence model, a recorded episode must give
back the recorded probabilities. The episode here mixes what used to break that: the policy
driving, the operator holding stop in auto, an intervention, and the deadman's silence.

Frames come from a replay camera whose pictures survive the recorder's JPEG round trip
unchanged (checked), so the replay sees the very pixels the car's policy saw.
"""

from __future__ import annotations

import pytest
from extras import NEEDS_TF

pytest.importorskip("tensorflow", reason=NEEDS_TF)

import time

import cv2
import numpy as np
import tensorflow as tf
from daemon_helpers import PERIOD, SPEC, moving, robot_config, running_robot, wait_until
from policy_helpers import scale_weights

from malpi.actions import DEFAULT_ACTIONS, previous_actions
from malpi.policy.export import make_bundle
from malpi.policy.model import build_policy
from malpi.recorder.codec import decode_jpeg, encode_jpeg
from malpi.recorder.recorder import EpisodeMeta, Recorder, Step
from malpi.recorder.store import EpisodeStore


def jpeg_stable_frames(n: int, h: int, w: int) -> list[np.ndarray]:
    """Smooth random pictures, each re-encoded until JPEG gives it back exactly."""
    rng = np.random.default_rng(3)
    frames = []
    for _ in range(n):
        x = cv2.resize(rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8), (w, h))
        for _ in range(60):
            y = decode_jpeg(encode_jpeg(x))
            if np.array_equal(x, y):
                break
            x = y
        assert np.array_equal(decode_jpeg(encode_jpeg(x)), x), "no JPEG fixed point found"
        frames.append(x)
    return frames


def replay_db(path, frames) -> None:
    with Recorder(path) as rec:
        rec.start_episode(EpisodeMeta(DEFAULT_ACTIONS))
        for i, f in enumerate(frames):
            rec.record(Step(f, 2, "human", float(i), float(i)))


def test_a_recorded_episode_replays_to_the_recorded_probabilities(tmp_path):
    net = build_policy(SPEC, seed=5)
    scale_weights(net, 2.5)  # the LSTM state matters: probabilities move from step to step
    bundle = make_bundle(net, DEFAULT_ACTIONS)
    policy = bundle.save(tmp_path / "p.malpi")
    replay_db(
        tmp_path / "camera.sqlite", jpeg_stable_frames(40, SPEC.image_height, SPEC.image_width)
    )
    config = robot_config(
        tmp_path,
        policy,
        **{
            "camera.backend": "replay",
            "camera.replay.db": str(tmp_path / "camera.sqlite"),
            "camera.replay.loop": True,
            "camera.fps": 50.0,
            "reward.enabled": False,
        },
    )
    with running_robot(config) as (robot, factory, events, result):
        loop = robot.loop
        loop.set_mode("auto").result(2)
        wait_until(lambda: moving(factory))
        time.sleep(15 * PERIOD)  # the policy drives
        for _ in range(8):  # the operator holds stop: nothing acts, nothing is recorded
            loop.drive(None)
            time.sleep(PERIOD)
        time.sleep(0.4)  # the deadman lets the policy take over again
        for _ in range(5):  # an intervention: the operator steers
            loop.drive(0)
            time.sleep(PERIOD)
        time.sleep(0.4 + 15 * PERIOD)  # and the policy drives on
        loop.set_mode("manual").result(2)  # manual with no keys held: the deadman, no steps
        time.sleep(10 * PERIOD)
        loop.drive(4)  # one human step
        time.sleep(3 * PERIOD)
        robot.recorder.flush()
        assert not result
    with EpisodeStore(config.recording.path, readonly=True) as store:
        (info,) = [e for e in store.episodes() if e.step_count]
        ep = store.load_episode(info.id)
    assert ep.info.dropped_steps == 0
    sources = set(ep.sources)
    assert {"policy", "intervention", "human"} <= sources, sources

    # Replay from a zero state, as training does.
    T = len(ep)
    out = net.sequence_model(
        {
            "frames": tf.convert_to_tensor(ep.frames[None]),
            "prev_actions": tf.one_hot(previous_actions(ep.actions)[None], SPEC.num_actions),
            "episode_starts": tf.convert_to_tensor(np.eye(1, T, dtype=np.float32)),
            "h0": tf.zeros((1, SPEC.lstm_units)),
            "c0": tf.zeros((1, SPEC.lstm_units)),
        }
    )
    replayed = tf.nn.softmax(out["logits"])[0].numpy()
    assert np.isfinite(ep.probs).all()  # the policy stepped on every recorded step, human ones too
    assert np.abs(ep.probs - replayed).max() < 1e-4
    assert np.abs(np.diff(ep.probs, axis=0)).max() > 1e-3  # and the probabilities did move
