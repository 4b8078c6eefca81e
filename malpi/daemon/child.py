"""What the daemon's two child processes (link, recorder) share: start-up, signals, the way home.

The control process starts a child as ``python -m malpi.daemon link`` (or
``recorder``) and writes one JSON line to its stdin: the validated
configuration, the ``ipc://`` endpoint to connect to and the private runtime
directory. It keeps stdin open for the child's whole life: end of file means
the control process has gone (closed it to stop the child, or died, however it
died), and the child finishes its work and exits.

Children ignore SIGINT and SIGHUP: a terminal's Ctrl-C or hang-up is the
control process's to handle, which stops the children in order (the recorder
last, so that the final episode is closed). SIGTERM stops a child cleanly.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from malpi.config import Config

log = logging.getLogger(__name__)


@dataclass
class ChildContext:
    role: str
    config: Config
    endpoint: str  # ipc:// address of the control process's socket for this child
    runtime_dir: Path
    stop: threading.Event = field(default_factory=threading.Event)
    parent_gone: bool = False  # stdin ended without the control process saying stop
    extra: dict[str, Any] = field(default_factory=dict)


def run_child(role: str, main: Callable[[ChildContext], int]) -> None:
    """The body of ``python -m malpi.daemon.<role>``: read settings, then ``main``; exit with its code."""
    # On a terminal the control process may be showing its status line (written with \r and no
    # newline): a record first clears it, rather than landing glued to its end.
    clear = "\r\033[K" if sys.stderr.isatty() or os.environ.get("MALPI_STATUS_LINE") else ""
    logging.basicConfig(
        level=logging.INFO,
        format=f"{clear}%(asctime)s %(levelname)s %(name)s [{role}]: %(message)s",
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    line = sys.stdin.buffer.readline()
    if not line:
        raise SystemExit(f"malpi {role}: no settings on stdin (started by hand?)")
    settings = json.loads(line)
    if settings.get("debug"):
        logging.getLogger().setLevel(logging.DEBUG)
    from malpi.config import config_from_dict

    ctx = ChildContext(
        role=role,
        config=config_from_dict(settings["config"]),
        endpoint=settings["endpoint"],
        runtime_dir=Path(settings["runtime_dir"]),
        extra=settings.get("extra", {}),
    )
    signal.signal(signal.SIGTERM, lambda *_: ctx.stop.set())

    def watch_parent() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except OSError:
            pass
        if not ctx.stop.is_set():
            ctx.parent_gone = True
        ctx.stop.set()

    threading.Thread(target=watch_parent, name=f"malpi-{role}-parent", daemon=True).start()
    try:
        code = main(ctx)
    except Exception:
        log.exception("%s process failed", role)
        code = 1
    sys.stdout.flush()
    # Threads of libraries (ZeroMQ, LiteRT) must not hold the exit up.
    os._exit(code)
