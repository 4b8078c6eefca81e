"""Bundle validation in a throwaway process: one child per bundle, nothing shared.

Validating a bundle inflates untrusted members, parses weights and test-steps
two LiteRT models: hundreds of milliseconds of GIL-held work for a seed-size
bundle, and whatever native code does with a hostile one. In the link's own
process that work delays every request behind it (an operator's ping, a
stop); here it runs in ``python -m malpi.daemon.link.validator`` at a lower
priority, and the link only writes the bytes to its stdin and reads one line
of JSON back. A child that crashes, is killed or takes too long is a rejected
bundle, not a dead link, and its memory goes when it exits.

The child also writes the runtime model the control process will map (named
by its content, into the link's private models directory), so the link never
holds a parsed bundle.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from malpi.config import Config

VALIDATE_TIMEOUT = 60.0  # s: a seed-size bundle takes about 0.5 s here, a few seconds on a Pi
NICE = 5  # below the link (and far below the control thread, which is real-time where allowed)


class ValidationError(Exception):
    """A bundle was refused; ``code`` is the protocol's error code (rejected or refused)."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class Validated:
    """What the link needs of a valid bundle: its identity and the model the robot runs."""

    label: str
    sha256: str  # of the bundle file
    spec: dict[str, Any]
    model: Path  # the runtime model, written into the models directory
    model_sha256: str
    backend: str  # what the model is (policy.backend resolved for this bundle)


class BundleValidator:
    """Validates bundles against a robot's configuration, each in a child process of its own."""

    def __init__(self, config: Config, models: Path, timeout: float = VALIDATE_TIMEOUT):
        expect = config.bundle_expectations()
        self.settings = {
            "actions": expect["expected_actions"].to_list(),
            "image": list(expect["expected_image"]),
            "control_hz": expect["expected_control_hz"],
            "backend": config.policy.backend,
            "models": str(models),
        }
        self.timeout = timeout
        self.command = [sys.executable, "-m", "malpi.daemon.link.validator"]

    def validate(self, data: bytes | memoryview) -> Validated:
        """Validate ``data`` completely and stage its runtime model; ValidationError if not."""
        proc = subprocess.Popen(
            [*self.command, json.dumps(self.settings)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C is the daemon's to handle
        )
        # Plain blocking writes and reads, which hold the GIL only between system calls
        # (communicate() would take it back for every 4 KiB of a 48 MB bundle); a timer kills
        # a child that hangs, which ends them.
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(self.timeout, kill)
        timer.start()
        try:
            with contextlib.suppress(BrokenPipeError):  # it died before reading everything
                proc.stdin.write(data)
                proc.stdin.close()
            out = proc.stdout.read()
            proc.wait()
        finally:
            timer.cancel()
            proc.stdout.close()
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        if timed_out.is_set():
            raise ValidationError("rejected", f"validating the bundle took over {self.timeout:g} s")
        try:  # its answer is the last line (native code may have printed before it)
            result = json.loads(out.splitlines()[-1])
        except (ValueError, IndexError):
            how = (
                f"signal {-proc.returncode}"
                if proc.returncode < 0
                else f"exit code {proc.returncode}"
            )
            raise ValidationError(
                "rejected", f"the bundle validator died ({how}) on this bundle"
            ) from None
        if "error" in result:
            raise ValidationError(result["code"], result["error"])
        return Validated(
            label=result["label"],
            sha256=result["sha256"],
            spec=result["spec"],
            model=Path(result["model"]),
            model_sha256=result["model_sha256"],
            backend=result["backend"],
        )


def _validate(data: bytes, settings: dict[str, Any]) -> dict[str, Any]:
    """In the child: validate ``data`` and stage its runtime model; the JSON answer."""
    import hashlib

    from malpi.actions import ActionTable
    from malpi.policy.bundle import BundleError, PolicyBundle
    from malpi.policy.runtime import resolve_backend, write_runtime_model

    try:
        bundle = PolicyBundle.from_bytes(
            data,
            expected_actions=ActionTable.from_list(settings["actions"]),
            expected_image=tuple(settings["image"]),
            expected_control_hz=settings["control_hz"],
        )
    except BundleError as exc:
        return {"code": "rejected", "error": str(exc)}
    except Exception as exc:  # anything else untrusted bytes provoke
        return {"code": "rejected", "error": f"unreadable bundle: {exc!r}"}
    try:
        backend = resolve_backend(bundle, settings["backend"])
    except ValueError as exc:  # e.g. litert_int8 asked for, and the bundle has no integer model
        return {"code": "rejected", "error": str(exc)}
    try:
        model = write_runtime_model(bundle, backend, Path(settings["models"]))
        with model.open("rb") as f:
            model_sha = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        return {"code": "refused", "error": f"cannot stage the policy for loading: {exc}"}
    return {
        "label": bundle.label,
        "sha256": bundle.sha256,
        "spec": bundle.spec.to_dict(),
        "model": str(model),
        "model_sha256": model_sha,
        "backend": backend,
    }


def main() -> None:
    with contextlib.suppress(OSError):
        os.nice(NICE)
    from malpi.policy.bundle import MAX_BUNDLE_BYTES

    data = sys.stdin.buffer.read(MAX_BUNDLE_BYTES + 1)
    sys.stdout.write(json.dumps(_validate(data, json.loads(sys.argv[1]))) + "\n")


if __name__ == "__main__":
    main()
