"""Keep TensorFlow's and LiteRT's known start-up chatter off the terminal; keep the rest.

Their C++ halves write straight to file descriptor 2, past Python's logging, and some of it
ignores ``TF_CPP_MIN_LOG_LEVEL``: TensorFlow logs through absl before absl is initialised
("Could not find cuda drivers", "failed call to cuInit" on every machine without a GPU), and
LiteRT has no log-severity setting in its Python API ("Created TensorFlow Lite XNNPACK delegate"
on every interpreter). So, around the few calls that say these things, fd 2 is pointed at a pipe
and everything that comes through is forwarded except the lines in :data:`NOISE`: a real error
still reaches the terminal. ``malpi -v`` turns the filter off.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

NOISE = re.compile(
    "|".join(
        [
            r"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.",
            r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
            # No GPU: the CUDA stub finds no driver, then the platform's cuInit fails. On a machine
            # with a GPU whose driver is broken, malpi -v shows them.
            r"I\d{4} [\d:.]+ +\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, GPU will not be used\.",
            r"E\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit: .*",
            # The converter's calibrator, on every integer model it makes.
            r"fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, output_inference_type: \w+",
        ]
    )
)

_enabled = True
# One redirection at a time: two overlapping ones (threads building interpreters together)
# would each restore the other's pipe. Within one, a nested call just runs.
_lock = threading.RLock()
_depth = 0


def set_enabled(enabled: bool) -> None:
    """Filter (the default) or let everything through (``malpi -v``)."""
    global _enabled
    _enabled = enabled


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Forward what is written to fd 2 meanwhile, except the lines :data:`NOISE` matches."""
    global _depth
    if not _enabled:
        yield
        return
    with _lock:
        _depth += 1
        try:
            if _depth > 1:
                yield
            else:
                with _redirected():
                    yield
        finally:
            _depth -= 1


@contextlib.contextmanager
def _redirected() -> Iterator[None]:
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no fd 2 (closed, or not a real file)
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    # A thread drains the pipe as it fills, so a writer never blocks on it.
    forwarder = threading.Thread(
        target=_forward, args=(read_end, saved), name="malpi-stderr-filter", daemon=True
    )
    forwarder.start()
    try:
        yield
    finally:
        with contextlib.suppress(ValueError, AttributeError):
            sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last write end closes: the forwarder reads to its end
        # A child process started meanwhile (by another thread) holds the write end too: then
        # the forwarder goes on serving it, and closes both ends when it exits.
        forwarder.join(1.0)


def _forward(read_end: int, out: int) -> None:
    pending = b""
    try:
        while chunk := os.read(read_end, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            _write(out, lines)
        if pending:
            _write(out, [pending], newline=False)
    finally:
        os.close(read_end)
        os.close(out)


def _write(out: int, lines: list[bytes], newline: bool = True) -> None:
    keep = [line for line in lines if not NOISE.fullmatch(line.decode(errors="replace").rstrip())]
    if keep:
        data = b"\n".join(keep) + (b"\n" if newline else b"")
        while data:
            data = data[os.write(out, data) :]


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Imports ``tensorflow`` (and probes its devices, where cuInit logs) inside the filter."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "tensorflow":
            return None
        for finder in sys.meta_path:  # the spec the other finders would give
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            with filtered_stderr():
                execute(module)
                try:
                    module.config.list_physical_devices("GPU")
                except Exception as exc:  # noqa: BLE001 - its first real use will say it again
                    log.debug("TensorFlow's device probe failed: %s", exc)

        spec.loader.exec_module = exec_module  # this spec's loader instance only
        return spec


def quiet_tensorflow_import() -> None:
    """Make the coming ``import tensorflow`` (wherever it happens) filter its chatter."""
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorFlow())
