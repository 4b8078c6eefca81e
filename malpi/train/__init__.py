"""The offline trainer: recorded episodes and simulator demonstrations in, a policy bundle out.

Modules, each one idea:

- ``episodes``: read episodes (recorder databases, simulator ``.npz`` demos) into
  training targets and step weights; split them by episode.
- ``augment``: image augmentation of whole sequences (brightness, contrast,
  noise, small shifts).
- ``data``: ``tf.data`` pipelines of fixed-length sequences (windows or
  TBPTT lanes) with parallel JPEG decoding and prefetching.
- ``demos``: expert demonstrations in the simulator, written by the recorder.
- ``distribute``: the ``tf.distribute`` strategy (default, mirrored, multi-worker).
- ``bc``: many-to-many behaviour cloning with checkpoints, resume, early stopping.
- ``dagger``: roll out the policy, label with the expert, aggregate, retrain.
- ``evaluate``: next-action accuracy offline, closed-loop laps through the step runtime.
- ``pictures``: training curves, confusion matrix, trajectories (PNG).
- ``recipe``: the one command that trains the shipped default policy.
- ``cli``: ``malpi train ...`` and ``malpi eval``.

Nothing here imports robot-only code (gpiozero, zmq, the daemon).
"""
