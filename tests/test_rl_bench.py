"""``malpi bench rl`` plumbing on a tiny budget: every method runs, the report has its keys."""

import pytest
from extras import NEEDS_TF

pytest.importorskip("tensorflow", reason=NEEDS_TF)

import json

from malpi.cli import main
from malpi.rl.bench import format_table, run_bench, sb3_available


def test_bench_reports_the_documented_keys(tmp_path, capsys):
    out = tmp_path / "rl.json"
    rc = main(
        [
            "bench",
            "rl",
            "--json",
            str(out),
            "--seeds",
            "0",
            "--steps",
            "512",
            "--eval-every",
            "256",
            "--episodes",
            "3",
            "--methods",
            "ppo_lstm,ppo_feedforward,drqn",
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert {"steps_to_475", "wall_s", "steps_to_475_per_seed", "feedforward", "drqn"} <= set(report)
    assert "sb3_steps_to_475" not in report  # not asked for
    runs = report["methods"]["ppo_lstm"]["runs"]
    assert runs[0]["steps"] == 512 and [s for s, _ in runs[0]["curve"]] == [256, 512]
    # 512 steps are far too few: the target is reported as not reached, not invented.
    assert report["steps_to_475"] is None and report["feedforward"]["reached"] == "0/1"
    assert "not reached" in capsys.readouterr().out


@pytest.mark.skipif(not sb3_available(), reason="sb3-contrib is not installed")
def test_sb3_recurrent_ppo_runs_in_the_same_harness():
    report = run_bench([0], ["sb3_recurrent_ppo"], steps=512, eval_every=256, episodes=3)
    assert report["sb3_steps_to_475"] is None and "sb3_wall_s" in report
    assert [s for s, _ in report["methods"]["sb3_recurrent_ppo"]["runs"][0]["curve"]] == [256, 512]
    assert "sb3_recurrent_ppo" in format_table(report)
