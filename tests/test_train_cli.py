"""The trainer's commands end to end at a tiny size: demos -> bc -> bundle -> eval JSON."""

from __future__ import annotations

import pytest
from extras import NEEDS_TF

pytest.importorskip("tensorflow", reason=NEEDS_TF)

import json

from policy_helpers import TINY_SPEC

from malpi.cli import main
from malpi.policy.bundle import PolicyBundle
from malpi.recorder import EpisodeStore


def test_demos_bc_and_eval_from_the_command_line(tmp_path, capsys):
    db = tmp_path / "demos.sqlite"
    assert (
        main(
            [
                "train",
                "demos",
                "--out",
                str(db),
                "--tracks",
                "0-2",
                "--steps",
                "40",
                "--image",
                "48x64",
            ]
        )
        == 0
    )
    with EpisodeStore(db, readonly=True) as store:
        assert len(store.episodes()) == 3
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(TINY_SPEC.to_dict()))
    out = tmp_path / "tiny.malpi"
    args = ["train", "bc", "--data", str(db), "--out", str(out), "--spec", str(spec)]
    args += ["--epochs", "1", "--batch", "4", "--length", "8", "--no-progress", "--no-augment"]
    assert main(args) == 0
    bundle = PolicyBundle.load(out)
    assert bundle.spec == TINY_SPEC and bundle.manifest["provenance"]["trainer"] == "malpi.train"
    workdir = tmp_path / "tiny.malpi.d"
    assert (workdir / "history.json").exists() and (workdir / "curves.png").exists()
    capsys.readouterr()

    report_path = tmp_path / "eval.json"
    pictures = tmp_path / "pics"
    args = ["eval", str(out), "--json", str(report_path), "--tracks", "1000", "--laps", "1"]
    args += ["--max-steps", "60", "--pictures", str(pictures)]
    assert main(args) == 0
    report = json.loads(report_path.read_text())
    # A person reads a short summary; the whole report is in the file.
    printed = capsys.readouterr().out
    assert printed.startswith("policy ") and f"the whole report: {report_path}" in printed
    assert len(printed.splitlines()) < 30
    (completed,) = [line.split() for line in printed.splitlines() if line.startswith("completed")]
    assert completed == ["completed", str(report["completed_tracks"]), "of", "1", "tracks"]
    for key in ("tracks", "laps_mean", "offtrack_episodes", "next_action_accuracy"):
        assert key in report
    # train bc made an integer model (calibrated on simulated drives and the episodes), kept
    # only if it agrees with float on held-out frames; eval runs it then, as the daemon would.
    integer = bundle.manifest["provenance"]["integer"]
    assert integer["steps"] > 0 and integer["calibration"]["recorded_episodes"] == 3
    assert (bundle.tflite_integer is not None) == integer["kept"]
    assert report["backend"] == ("litert_int8" if integer["kept"] else "litert_dynamic")
    assert report["car"] == "differential"
    assert report["tracks"] == 1
    assert [t["track"] for t in report["per_track"]] == [1000]
    assert 0 <= report["next_action_accuracy"] <= 1 and report["held_out_steps"] > 0
    assert (pictures / "trajectories.png").exists() and (pictures / "confusion.png").exists()


def test_quantize_adds_an_integer_model_only_when_it_agrees(tmp_path, capsys):
    import make_fixtures

    old = tmp_path / "old.malpi"
    old.write_bytes(make_fixtures.read("b"))
    before = PolicyBundle.load(old)
    out = tmp_path / "new.malpi"
    # Nothing can agree on more than every step: refused, nothing written.
    assert main(["train", "quantize", str(old), "--out", str(out), "--min-agreement", "1.01"]) == 1
    printed = capsys.readouterr().out
    assert "not kept" in printed and "nothing written" in printed and not out.exists()

    assert main(["train", "quantize", str(old), "--out", str(out), "--min-agreement", "0"]) == 0
    printed = capsys.readouterr().out
    assert "integer model: argmax agrees with float on" in printed
    assert "dynamic-range model:" in printed and f"wrote {out}" in printed
    new = PolicyBundle.load(out)
    assert new.label == before.label and new.weights.keys() == before.weights.keys()
    assert new.tflite_integer is not None and new.tflite_integer != before.tflite_integer
    record = new.manifest["provenance"]["integer"]
    assert record["kept"] and record["steps"] == 10 * 600  # the expert on the 10 eval tracks
    assert record["calibration"] == {
        "sim_tracks": "0-7",
        "held_out_sim_tracks": "1000-1009",
        "samples": 500,
    }
