"""The built-in simulator: procedural tracks, a forward camera, car kinematics, a
gymnasium environment, a scripted expert and the robot's simulated hardware twins.

Importing this package is cheap (no OpenCV, no gymnasium); see docs/simulator.md.
The env ids are registered by ``import malpi.sim.env``.
"""

from malpi.sim.track import EVAL_SEEDS, STANDARD_EVAL_SEEDS, TRAIN_SEEDS

__all__ = ["EVAL_SEEDS", "STANDARD_EVAL_SEEDS", "TRAIN_SEEDS"]

DEFAULT_DT = 0.05  # s: the control period the simulator steps (the daemon's default 20 Hz)
