"""The mirrored strategy trains on two logical CPU devices (in a subprocess: the device
split must happen before TensorFlow initialises, and must not leak into other tests)."""

from __future__ import annotations

import pytest
from extras import NEEDS_TF

pytest.importorskip("tensorflow", reason=NEEDS_TF)

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    from malpi.train.distribute import make_strategy, use_logical_cpus
    use_logical_cpus(2)
    import numpy as np
    from malpi.actions import DEFAULT_ACTIONS
    from malpi.train.bc import Trainer
    from malpi.train.episodes import load_episodes, split_episodes
    from policy_helpers import TINY_SPEC
    from train_helpers import IMAGE, tiny_config, tiny_demos

    tiny_demos({db!r}, tracks=(0, 1, 2, 3), steps=40)
    train, val = split_episodes(load_episodes([{db!r}], DEFAULT_ACTIONS, IMAGE), 0.25)
    strategy = make_strategy("mirrored")
    trainer = Trainer(TINY_SPEC, DEFAULT_ACTIONS, tiny_config(epochs=3), {workdir!r}, strategy)
    progress = trainer.fit(train, val)
    variable = trainer.model.trainable_variables[0]
    copies = strategy.experimental_local_results(getattr(variable, "value", variable))
    print(json.dumps({{
        "replicas": strategy.num_replicas_in_sync,
        "devices": list(strategy.extended.worker_devices),
        "copies": len(copies),
        "copies_equal": all(np.array_equal(np.asarray(copies[0]), np.asarray(c)) for c in copies),
        "losses": [h["train_loss"] for h in progress.history],
        "val_nll": progress.best_val_nll,
    }}))
    """
)


@pytest.mark.slow
def test_mirrored_strategy_trains_on_two_logical_devices(tmp_path):
    tests = str(Path(__file__).parent)
    script = SCRIPT.format(tests=tests, db=str(tmp_path / "d.sqlite"), workdir=str(tmp_path / "w"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and len(result["devices"]) == 2
    assert all("CPU:0" in d or "CPU:1" in d for d in result["devices"])
    assert result["copies"] == 2 and result["copies_equal"]  # gradients were all-reduced
    assert result["losses"][-1] < result["losses"][0]
