"""The drivetrain a configuration names, with GPIO failures explained to the person at the car.

gpiozero's own failures are accurate but say nothing of what to do: on a
machine without GPIO it warns once per pin library it tried and then raises
``Unable to load any default pin factory!``. Here those become one
:class:`GPIOUnavailable` naming each library's reason and what to install or
change, and a pin held by another program names that pin's configuration key.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

from gpiozero import BadPinFactory, GPIOPinInUse, PinFactoryFallback

from malpi.config import Config
from malpi.drivetrain.base import Drivetrain


class GPIOUnavailable(RuntimeError):
    """The drivetrain's pins cannot be driven here; the message says why and what to do."""


NO_PIN_FACTORY_HINT = (
    "On a Raspberry Pi: sudo apt install python3-lgpio, in a virtualenv made with "
    "--system-site-packages (README: On the Raspberry Pi), and a user in the gpio group. "
    "No Pi: malpi drive --sim, or GPIOZERO_PIN_FACTORY=mock GPIOZERO_MOCK_PIN_CLASS=mockpwmpin "
    "to try it on gpiozero's mock pins."
)


def drivetrain_from_config(
    config: Config, sim_world: Any = None, pin_factory: Any = None
) -> Drivetrain:
    """The configured drivetrain, its outputs claimed and stopped; raises
    :class:`GPIOUnavailable` with a hint when the pins cannot be had."""
    if config.drivetrain.backend == "sim":
        from malpi.drivetrain.sim import SimDrivetrain

        return SimDrivetrain(sim_world)
    with explained_gpio_errors(config):
        return _gpio_drivetrain(config, pin_factory)


@contextlib.contextmanager
def explained_gpio_errors(config: Config) -> Iterator[None]:
    """Turn gpiozero's fallback warnings and pin errors into one :class:`GPIOUnavailable`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PinFactoryFallback)
        try:
            yield
        except BadPinFactory as exc:
            tried = "; ".join(
                str(w.message).removeprefix("Falling back from ")
                for w in caught
                if issubclass(w.category, PinFactoryFallback)
            )
            raise GPIOUnavailable(
                f"no GPIO here: gpiozero found no pin library that works ({tried or exc}). "
                + NO_PIN_FACTORY_HINT
            ) from None
        except (GPIOPinInUse, OSError) as exc:
            text = str(exc)
            if not isinstance(exc, GPIOPinInUse) and "busy" not in text.lower():
                raise
            pins = ", ".join(f"{k} = {v}" for k, v in _pins(config).items())
            raise GPIOUnavailable(
                f"a drivetrain pin is in use by another program or device ({text}); this "
                f"drivetrain uses {pins}. Is the malpi service running? "
                "(sudo systemctl stop malpi)"
            ) from None
        finally:
            for w in caught:  # anything else gpiozero warned of is still worth seeing
                if not issubclass(w.category, PinFactoryFallback):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _pins(config: Config) -> dict[str, int]:
    """The pins this drivetrain uses, by configuration key."""
    dt = config.drivetrain
    if dt.backend == "servo":
        section, names = dt.servo, ["steering_pin", "throttle_pin"]
    else:
        section = dt.differential
        sides = ("forward", "backward") if section.driver == "in_in" else ("phase",)
        names = [f"{s}_{n}" for s in ("left", "right") for n in (*sides, "enable")]
    return {
        f"drivetrain.{dt.backend}.{n}": getattr(section, n)
        for n in names
        if getattr(section, n) >= 0
    }


def _gpio_drivetrain(config: Config, pin_factory: Any) -> Drivetrain:
    dt = config.drivetrain
    if dt.backend == "differential":
        from malpi.drivetrain.gpio import DifferentialDrive

        d = dt.differential
        pin = lambda n: None if n < 0 else n  # noqa: E731 - -1 means "not wired"
        pins = {
            "left_forward": pin(d.left_forward),
            "left_backward": pin(d.left_backward),
            "right_forward": pin(d.right_forward),
            "right_backward": pin(d.right_backward),
        }
        if d.driver == "phase_enable":
            pins = {"left_phase": pin(d.left_phase), "right_phase": pin(d.right_phase)}
        return DifferentialDrive(
            driver=d.driver,
            **pins,
            left_enable=pin(d.left_enable),
            right_enable=pin(d.right_enable),
            left_inverted=d.left_inverted,
            right_inverted=d.right_inverted,
            max_speed=d.max_speed,
            min_speed=d.min_speed,
            steering_trim=d.steering_trim,
            pwm_frequency=d.pwm_frequency or None,
            pin_factory=pin_factory,
        )
    from malpi.drivetrain.servo import ServoDrive

    s = dt.servo
    return ServoDrive(
        steering_pin=s.steering_pin,
        throttle_pin=s.throttle_pin,
        steering_min_us=s.steering_min_us,
        steering_center_us=s.steering_center_us,
        steering_max_us=s.steering_max_us,
        steering_reversed=s.steering_reversed,
        throttle_min_us=s.throttle_min_us,
        throttle_neutral_us=s.throttle_neutral_us,
        throttle_max_us=s.throttle_max_us,
        throttle_reversed=s.throttle_reversed,
        max_speed=s.max_speed,
        pin_factory=pin_factory,
    )
