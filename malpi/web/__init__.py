"""``malpi web``: the browser console, an operator client of the robot's link (docs/web.md).

Runs on the robot (``systemd/malpi-web.service``) or on a laptop pointing at
one. Nothing here imports robot-only code: it reaches the car through the link.
"""
