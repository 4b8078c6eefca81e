"""Reinforcement learning with MaLPi's recurrent policy.

- :mod:`malpi.rl.ppo`: recurrent actor-critic (PPO-clipped; advantage
  actor-critic as a setting) on vectorised gymnasium environments, one module
  readable top to bottom.
- :mod:`malpi.rl.drqn`: a recurrent Q-network trained from replayed sequences
  with stored state and burn-in (R2D2-style), for comparison.
- :mod:`malpi.rl.common`: what the two training loops share (set-up, the
  gradient step, the progress and result records).
- :mod:`malpi.rl.tasks`: CartPole with the velocities hidden, the benchmark task.
- :mod:`malpi.rl.evaluate`: batched evaluation episodes for any policy.
- :mod:`malpi.rl.robot`: the off-line loop against a robot's recording.

Nothing here imports robot-only code; TensorFlow is imported by the modules
that train, not by this package.
"""
