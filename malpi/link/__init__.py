"""The link: ZeroMQ telemetry and commands between the robot and its operators.

Nothing is imported here, so that the configuration and the daemon's build
can use the address checks and the policy store without loading ZeroMQ.
See docs/protocol.md for the wire protocol.
"""
