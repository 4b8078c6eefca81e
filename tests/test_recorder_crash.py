"""THE CRASH TEST: kill a recording process with SIGKILL at random moments, over and over.

After every kill: the database opens and passes SQLite's integrity check;
every step on disk is intact (frame and every field equal to the deterministic
values of its (episode, step)); steps are committed in order (what is on disk
is a prefix of what was recorded); and nothing recorded more than a second
before the kill is missing. The same database is reused across kills, so each
run also recovers the episode the previous one left running.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from recorder_helpers import check_stored

from malpi.actions import DEFAULT_ACTIONS
from malpi.recorder import EpisodeStore, Recorder

KILLS = 20
LOSS_LIMIT = 1.0  # seconds: what a crash may lose
TESTS = Path(__file__).resolve().parent
CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); import recorder_helpers as h; "
    "h.crash_child_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))"
)


def parse_log(path: Path) -> list[list[str]]:
    """The log's complete lines, split (a line cut by the kill has no newline yet)."""
    text = path.read_text() if path.exists() else ""
    return [line.split() for line in text.split("\n")[:-1]]


def test_sigkill_at_random_moments_never_corrupts_or_loses_more_than_a_second(tmp_path):
    seed = int(os.environ.get("MALPI_CRASH_SEED", "20261123"))
    rng = random.Random(seed)
    db = tmp_path / "episodes.sqlite"
    Recorder(db).close()  # the file exists before the first kill
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}

    verified: dict[int, tuple[int, str]] = {}  # episode -> (steps, outcome) once checked
    checked_old_steps = 0  # steps older than LOSS_LIMIT at a kill, found on disk
    kills_after_recording = 0
    worst_loss = 0.0
    started = time.monotonic()
    for run in range(KILLS):
        log_path = tmp_path / f"run{run}.log"
        err_path = tmp_path / f"run{run}.err"
        with open(err_path, "wb") as err:
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(TESTS), str(db), str(log_path), str(run)],
                stdout=subprocess.DEVNULL, stderr=err, env=env,
            )  # fmt: skip
        try:
            # Random moments of three kinds, so that every seed covers all of them.
            if run % 4 == 0:
                time.sleep(rng.uniform(0.0, 0.4))  # during start-up and recovery
            else:
                deadline = time.monotonic() + 10.0
                while not any(e[0] == "O" for e in parse_log(log_path)):
                    assert child.poll() is None, f"child died: {err_path.read_text()[-2000:]}"
                    assert time.monotonic() < deadline, "child did not open the recorder"
                    time.sleep(0.005)
                # while recording: early on, or after more than the loss limit
                time.sleep(rng.uniform(0.05, 1.2) if run % 2 else rng.uniform(1.2, 1.8))
            assert child.poll() is None, f"child exited by itself: {err_path.read_text()[-2000:]}"
            t_kill = time.monotonic()
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
        events = parse_log(log_path)
        context = f"seed {seed}, run {run}"

        recorded: dict[int, list[tuple[int, float]]] = defaultdict(list)  # ep -> [(i, t)]
        dropped: set[tuple[int, int]] = set()
        ended: dict[int, tuple[str, float | None, float]] = {}
        for e in events:
            if e[0] == "R":
                recorded[int(e[1])].append((int(e[2]), float(e[3])))
            elif e[0] == "D":
                dropped.add((int(e[1]), int(e[2])))
            elif e[0] == "E":
                final = None if e[3] == "None" else float(e[3])
                ended[int(e[1])] = (e[2], final, float(e[4]))
        opened = any(e[0] == "O" for e in events)

        with EpisodeStore(db) as store:
            assert store.integrity_check() == "ok", context
            infos = {info.id: info for info in store.episodes()}

            # Earlier runs' episodes are untouched (a dead recorder's episode gets
            # 'interrupted' once the next recorder has opened the file).
            for ep, (n, outcome) in verified.items():
                info = infos[ep]
                assert info.step_count == n, context
                if outcome == "running" and opened:
                    assert info.outcome == "interrupted", context
                else:
                    assert info.outcome in (outcome, "interrupted"), context

            for ep, info in infos.items():
                if ep in verified:
                    continue
                assert info.config["hint"] == run and info.action_table == DEFAULT_ACTIONS, context
                accepted = [(i, t) for i, t in recorded[ep] if (ep, i) not in dropped]
                stored = [s.step for s in store.iter_steps(ep, decode=False)]
                # On disk: a prefix of what was recorded, in order, nothing else.
                assert stored == [i for i, _ in accepted[: len(stored)]], context
                # Missing: only what was recorded within the last second.
                missing = accepted[len(stored) :]
                if missing:
                    loss = t_kill - missing[0][1]
                    worst_loss = max(worst_loss, loss)
                    assert loss <= LOSS_LIMIT, (
                        f"{context}: episode {ep} lost steps {missing[0][0]}.. recorded "
                        f"{loss:.3f} s before the kill"
                    )
                checked_old_steps += sum(1 for _, t in accepted if t < t_kill - LOSS_LIMIT)
                # Every stored step is intact.
                for s in store.iter_steps(ep):
                    last = not info.running and s.step == info.last_step
                    check_stored(s, ep, s.step, last=last, final_reward=info.final_reward or 0.0)
                # An ending logged more than a second ago is on disk.
                if ep in ended and ended[ep][2] < t_kill - LOSS_LIMIT:
                    assert (info.outcome, info.final_reward) == ended[ep][:2], context
                verified[ep] = (len(stored), info.outcome)
            if any(t < t_kill - LOSS_LIMIT for steps in recorded.values() for _, t in steps):
                kills_after_recording += 1

    # Finally a recorder opens the file once more: nothing is left running, all still intact.
    with Recorder(db):
        pass
    with EpisodeStore(db) as store:
        assert store.integrity_check() == "ok"
        for info in store.episodes():
            assert not info.running
            assert info.step_count == verified[info.id][0]
            for s in store.iter_steps(info.id):
                check_stored(s, info.id, s.step, last=s.step == info.last_step,
                             final_reward=info.final_reward or 0.0)  # fmt: skip
        total = store.count_steps()
    elapsed = time.monotonic() - started
    print(
        f"\n{KILLS} kills in {elapsed:.1f} s: {len(verified)} episodes, {total} steps on disk, "
        f"{checked_old_steps} steps older than {LOSS_LIMIT} s checked present over "
        f"{kills_after_recording} kills, worst loss window {worst_loss:.3f} s"
    )
    # The runs did exercise the one-second promise, not only start-up kills.
    assert kills_after_recording >= 5 and checked_old_steps >= 40
