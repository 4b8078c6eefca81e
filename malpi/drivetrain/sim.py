"""Simulated drivetrain: motor commands drive the car of a real-time simulated world.

Same contract as the GPIO drivetrains (it shares their locking and stop
discipline): ``apply`` sets the command the physics thread integrates until
the next one, ``stop`` zeroes it from any thread, ``close`` stops and lets go
of the world. Whether the command steers a servo car or mixes into a
differential drive is the world's car model (``CarParams.drivetrain``).
"""

from __future__ import annotations

from typing import Any

from malpi.actions import STOP, MotorCommand
from malpi.drivetrain.guarded import GuardedDrivetrain
from malpi.sim.realtime import RealTimeWorld, shared_world


class SimDrivetrain(GuardedDrivetrain):
    def __init__(self, world: RealTimeWorld | None = None, **world_kwargs: Any) -> None:
        super().__init__()
        self.world = world if world is not None else shared_world(**world_kwargs)
        self.world.acquire()  # the car moves in real time from now until close()

    def _write(self, command: MotorCommand) -> None:
        self.world.set_command(command)

    def _write_stop(self) -> None:
        self.world.set_command(STOP)

    def _release(self) -> None:
        self.world.release()
