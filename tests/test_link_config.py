"""The link's configuration: defaults, validation naming the key, and the loopback-only rule."""

import pytest

from malpi.config import ConfigError, load_config
from malpi.protocol.address import endpoints_for, is_local


def test_link_defaults_are_loopback_and_valid():
    c = load_config()
    assert c.link.enabled and not c.link.curve and not c.link.allow_insecure_remote
    assert is_local(c.link.command) and is_local(c.link.telemetry)
    assert c.link.max_message_bytes > 64 * 1024 * 1024  # room for the largest bundle
    assert c.policy.store


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"link.max_message_bytes": 10}, "link.max_message_bytes: must be in [1024"),
        ({"link.telemetry_hwm": 0}, "link.telemetry_hwm: must be at least 1"),
        ({"link.frame_rate_hz": 120.0}, "link.frame_rate_hz: must be in [0, 60]"),
        ({"link.frame_jpeg_quality": 0}, "link.frame_jpeg_quality: must be in 1..100"),
        ({"link.curve": "yes"}, "link.curve: expected bool"),
        ({"link.keys_dir": "", "link.curve": True}, "link.keys_dir: CURVE needs"),
        ({"policy.store": ""}, "policy.store: must name a directory"),
        ({"link.command": "tcp://0.0.0.0:5555"}, "link.command: tcp://0.0.0.0:5555 is reachable"),
        ({"link.telemetry": "tcp://*:5556"}, "link.telemetry: tcp://*:5556 is reachable"),
        ({"link.command": "tcp://eth0:5555"}, "set link.curve = true"),
        ({"link.command": "tcp://192.0.2.7:5555"}, "link.allow_insecure_remote = true"),
    ],
)
def test_bad_link_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        {"link.command": "tcp://0.0.0.0:5555", "link.curve": True},
        {"link.command": "tcp://0.0.0.0:5555", "link.allow_insecure_remote": True},
        {"link.command": "ipc:///tmp/malpi-cmd", "link.telemetry": "ipc:///tmp/malpi-tel"},
        {"link.command": "tcp://[::1]:5555", "link.telemetry": "tcp://localhost:5556"},
        {
            "link.command": "tcp://127.0.0.1:*",
            "link.telemetry": "tcp://127.0.0.1:*",
            "link.frame_rate_hz": 0.0,
        },
    ],
)
def test_good_link_values(overrides):
    config = load_config(None, overrides)  # raises ConfigError if refused
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        assert getattr(getattr(config, section), name) == value


@pytest.mark.parametrize(
    "address, local",
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.1.2.3:1", True),
        ("tcp://[::1]:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://lo:5555", True),
        ("ipc:///run/malpi.sock", True),
        ("inproc://x", True),
        ("tcp://*:5555", False),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://[::]:5555", False),
        ("tcp://wlan0:5555", False),
        ("tcp://10.0.0.2:5555", False),
        ("tcp://robot.local:5555", False),
        ("udp://127.0.0.1:5555", False),
    ],
)
def test_is_local(address, local):
    assert is_local(address) is local


@pytest.mark.parametrize(
    "host, command, telemetry",
    [
        ("robot", "tcp://robot:5555", "tcp://robot:5556"),
        ("10.0.0.2:6000", "tcp://10.0.0.2:6000", "tcp://10.0.0.2:6001"),
        ("::1", "tcp://[::1]:5555", "tcp://[::1]:5556"),
        ("[::1]:7000", "tcp://[::1]:7000", "tcp://[::1]:7001"),
        ("tcp://127.0.0.1:6100", "tcp://127.0.0.1:6100", "tcp://127.0.0.1:6101"),
    ],
)
def test_endpoints_for(host, command, telemetry):
    assert endpoints_for(host) == (command, telemetry)
    assert endpoints_for(host, telemetry_port=9999)[1].endswith(":9999")
