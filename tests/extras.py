"""Which optional extras this install has.

The robot install (``pip install -e '.[robot,dev]'``) has no TensorFlow, gymnasium or pygame. A
test module that needs one starts with ``pytest.importorskip(name, reason=NEEDS_...)`` before its
other imports; a single test is marked ``@needs_tf``, ``@needs_gym`` or ``@needs_pygame``. Either way it is reported
as skipped with the reason, never silently left out.
"""

from __future__ import annotations

import importlib.util

import pytest

NEEDS_TF = "needs TensorFlow (the train extra); the robot install runs without it"
NEEDS_GYM = "needs gymnasium (the sim or train extra); the robot install runs without it"
NEEDS_PYGAME = "needs pygame (the operator extra); the robot install runs without it"

HAS_TF = importlib.util.find_spec("tensorflow") is not None
HAS_GYM = importlib.util.find_spec("gymnasium") is not None
HAS_PYGAME = importlib.util.find_spec("pygame") is not None

needs_tf = pytest.mark.skipif(not HAS_TF, reason=NEEDS_TF)
needs_gym = pytest.mark.skipif(not HAS_GYM, reason=NEEDS_GYM)
needs_pygame = pytest.mark.skipif(not HAS_PYGAME, reason=NEEDS_PYGAME)
