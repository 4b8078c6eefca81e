"""Shared test set-up: quiet TensorFlow, hardware mocked only at the pins.

Two installs run this suite with the same `python -m pytest`. The full one (`.[all]`, as CI
installs) runs every test. The robot's (`pip install -e '.[robot,dev]'`: LiteRT, no TensorFlow,
gymnasium or pygame) runs the daemon, link, recorder, drivetrain, camera and bundle tests on the
tiny bundles committed in tests/data/ (made by tests/make_fixtures.py), and reports the tests that
need a missing extra as skipped, with the reason (tests/extras.py).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
