"""``python -m malpi.daemon ROLE``: one of ``malpi drive``'s child processes (``link``, ``recorder``).

The control process starts these; they are not for running by hand. Scheduling
goes back to normal before anything is imported: a child inherits the control
process's real-time priority.
"""

import importlib
import sys

from malpi.daemon import realtime

realtime.leave()
ROLES = {"link": "malpi.daemon.link.main", "recorder": "malpi.daemon.recording"}
if len(sys.argv) != 2 or sys.argv[1] not in ROLES:
    raise SystemExit(
        f"usage: python -m malpi.daemon {{{','.join(ROLES)}}} (started by malpi drive)"
    )
child = importlib.import_module("malpi.daemon.child")
child.run_child(sys.argv[1], importlib.import_module(ROLES[sys.argv[1]]).main)
