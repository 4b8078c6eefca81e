"""``python -m malpi.daemon.link``: the link process (started by ``malpi drive``, not by hand)."""

from malpi.daemon.child import run_child
from malpi.daemon.link.main import main

run_child("link", main)
