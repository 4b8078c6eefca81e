"""Bundles are validated in a throwaway child process: whatever one does to it (crash, hang,
garbage), the link gets a refusal that names it, and the running policy drives on.

All but the last test run on the robot install (no TensorFlow): the shipped bundle and the
default configuration."""

import hashlib
import os
import sys

import pytest

from malpi.config import load_config
from malpi.daemon.link.validator import BundleValidator, ValidationError
from malpi.operator.client import RobotError
from malpi.policy.bundle import PolicyBundle
from malpi.policy.runtime import make_backend_model
from malpi.policy.store import shipped_policy

DIES = "import os, sys; sys.stdin.buffer.read(100); os.kill(os.getpid(), 9)"
HANGS = "import sys, time; sys.stdin.buffer.read(); time.sleep(60)"


CONFIG = load_config(None, {})


def shipped() -> bytes:
    return shipped_policy().read_bytes()


def validator(tmp_path, **kw) -> BundleValidator:
    return BundleValidator(CONFIG, tmp_path / "models", **kw)


def test_a_valid_bundle_is_staged_for_the_control_process(tmp_path):
    data = shipped()
    v = validator(tmp_path).validate(data)
    bundle = PolicyBundle.from_bytes(data, check_models=False)
    assert (v.label, v.sha256) == (bundle.label, hashlib.sha256(data).hexdigest())
    assert v.spec == bundle.spec.to_dict()
    assert v.model.parent == tmp_path / "models"
    assert hashlib.sha256(v.model.read_bytes()).hexdigest() == v.model_sha256
    assert v.model.read_bytes() == make_backend_model(bundle, CONFIG.policy.backend)


def test_a_bad_bundle_is_rejected_naming_the_problem(tmp_path):
    with pytest.raises(ValidationError, match="not a zip") as err:
        validator(tmp_path).validate(b"garbage")
    assert err.value.code == "rejected"
    assert not list((tmp_path / "models").glob("*"))  # nothing staged


def test_a_validator_that_dies_is_a_rejection(tmp_path):
    v = validator(tmp_path)
    v.command = [sys.executable, "-c", DIES]
    with pytest.raises(ValidationError, match=r"validator died \(signal 9\)") as err:
        v.validate(shipped())
    assert err.value.code == "rejected"


def test_a_validator_that_hangs_is_killed(tmp_path):
    v = validator(tmp_path, timeout=0.5)
    v.command = [sys.executable, "-c", HANGS]
    with pytest.raises(ValidationError, match=r"took over 0.5 s"):
        v.validate(b"x")
    children = [p for p in os.listdir("/proc") if p.isdigit() and _parent(p) == os.getpid()]
    assert not [p for p in children if HANGS.encode() in _cmdline(p)]


def test_staging_where_nothing_can_be_written_is_refused(tmp_path):
    (tmp_path / "file").write_text("")  # models' parent is a file: not even root writes there
    v = BundleValidator(CONFIG, tmp_path / "file" / "models")
    with pytest.raises(ValidationError) as err:
        v.validate(shipped())
    assert err.value.code == "refused" and "cannot stage the policy" in str(err.value)


def test_the_link_survives_a_validator_crash_and_the_policy_drives_on(tmp_path):
    from daemon_helpers import moving, wait_until
    from link_helpers import bundles, link_config, running_link

    with running_link(link_config(tmp_path), in_process=True) as d, d.client() as c:
        c.subscribe(["event"])  # the link publishes its rejections itself
        c.set_mode("auto")
        wait_until(lambda: moving(d.factory))
        running = d.robot.loop.policy.version
        real = d.link.policies.validator.command
        d.link.policies.validator.command = [sys.executable, "-c", DIES]
        with pytest.raises(RobotError, match="validator died"):
            c.load_policy(bundles()["b"])
        assert d.robot.loop.policy.version == running and moving(d.factory)
        assert c.ping()
        reasons = []
        while (msg := c.receive(0.5)) is not None:
            if msg[1].kind == "policy_rejected":
                reasons.append(msg[1].details["reason"])
        assert len(reasons) == 1 and "validator died" in reasons[0]
        d.link.policies.validator.command = real
        assert c.load_policy(bundles()["b"]).version != running


def _parent(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
