"""gpiozero's mock PWM pins, with the wire's state kept in a file that outlives the process.

On a Raspberry Pi a GPIO line keeps its last level when the process driving it
dies (SIGKILL, a watchdog kill, a native crash): nothing runs ``close()``. An
in-process mock pin cannot show that, so this one mirrors every pin's state
into a shared memory-mapped file (one float64 per BCM pin, 0..27): another
process, or a later one, sees the wire as the dead one left it, and a pin
opened later starts from that state until it is driven (as the hardware does).

Run a command with these pins as the default factory::

    python tests/fakes/filepins.py PINFILE malpi drive ...

(the rest of the command line is ``malpi``'s).
"""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path

import numpy as np
from gpiozero.pins.mock import MockFactory, MockPWMPin

PINS = 28


def open_wires(path: str | os.PathLike) -> np.ndarray:
    """The shared state of the 28 wires (created as all low)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size != PINS * 8:
        path.write_bytes(bytes(PINS * 8))
    with path.open("r+b") as f:
        buf = mmap.mmap(f.fileno(), PINS * 8)
    return np.ndarray((PINS,), np.float64, buffer=buf)


class FilePWMPin(MockPWMPin):
    wires: np.ndarray  # set on the class by FilePinFactory

    def __init__(self, factory, info):
        super().__init__(factory, info)
        self._bcm = int(info.name.removeprefix("GPIO"))  # info.number is the header's pin
        self._state = float(self.wires[self._bcm])  # the wire as it was left

    def _change_state(self, value):
        changed = super()._change_state(value)
        self.wires[self._bcm] = float(self._state)
        return changed


def FilePinFactory(path: str | os.PathLike) -> MockFactory:  # noqa: N802 - a factory of factories
    pin_class = type("FilePWMPin", (FilePWMPin,), {"wires": open_wires(path)})
    return MockFactory(pin_class=pin_class)


if __name__ == "__main__":
    from gpiozero import Device

    from malpi.cli import main

    Device.pin_factory = FilePinFactory(sys.argv[1])
    raise SystemExit(main(sys.argv[2:]))
