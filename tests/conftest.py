"""Shared test set-up: quiet TensorFlow, hardware mocked only at the pins.

Two installs run this suite with the same `python -m pytest`. The full one (`.[all]`, as CI
installs) runs every test. The robot's (`pip install -e '.[robot,dev]'`: LiteRT, no TensorFlow,
gymnasium or pygame) runs the daemon, link, recorder, drivetrain, camera and bundle tests on the
tiny bundles committed in tests/data/ (made by tests/make_fixtures.py), and reports the tests that
need a missing extra as skipped, with the reason (tests/extras.py).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")


import pytest  # noqa: E402 - after the environment above, which TensorFlow reads on import


@pytest.fixture(autouse=True)
def _cores_given_back():
    """A test that confines this process to fewer cores (a benchmark run in-process) gives them
    back: every daemon a later test starts inherits them, and its isolation depends on them."""
    before = os.sched_getaffinity(0)
    scheduling = os.sched_getscheduler(0), sys.getswitchinterval()
    yield
    assert os.sched_getaffinity(0) == before, "the test left this process on fewer cores"
    # Nor real-time: every thread it starts later would be SCHED_FIFO, and a few busy ones
    # (a benchmark's publisher, gRPC's timers) then starve the rest of the process.
    assert (os.sched_getscheduler(0), sys.getswitchinterval()) == scheduling, (
        "the test left this process with other scheduling (real-time, GIL switch interval)"
    )


@pytest.fixture(scope="module")
def local_ray():
    """A Ray of this machine alone with 2 CPUs, for one test module.

    Its workers run this interpreter and import malpi as the test process does, and the tests'
    own modules (for job functions defined in a test). Shut down after the module: a Ray left
    running keeps its threads in this process and its processes on the cores through the
    timing-sensitive daemon tests that follow."""
    ray = pytest.importorskip("ray", reason="needs Ray (the ray extra)")
    tests = os.path.dirname(os.path.abspath(__file__))
    ray.init(
        num_cpus=2,
        runtime_env={"env_vars": {"PYTHONPATH": tests}},
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
        object_store_memory=256 * 1024 * 1024,
    )
    yield ray
    ray.shutdown()
