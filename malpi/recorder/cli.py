"""``malpi episodes list|show|delete|export --db PATH``: the recorded episodes from a shell;
``malpi episodes import-donkey TUB... --out DB``: DonkeyCar tubs into an episode database."""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any


def register(commands: Any, bench: Any) -> None:
    parser = commands.add_parser(
        "episodes",
        help="list, inspect, delete and export recorded episodes",
        description="Recorded episodes in an episode database (SQLite).",
    )
    actions = parser.add_subparsers(dest="episodes_command", required=True, metavar="ACTION")
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument(
        "--db", type=Path, metavar="PATH",
        help="the episode database (default: recording.path of the daemon's configuration)",
    )  # fmt: skip

    p = actions.add_parser("list", parents=[db], help="a table of the episodes")
    p.set_defaults(func=_list)

    p = actions.add_parser("show", parents=[db], help="one episode's metadata and step summary")
    p.add_argument("episode", type=int, metavar="N", help="the episode's ID (malpi episodes list)")
    p.add_argument("--steps", type=int, default=0, metavar="K", help="also print the first K steps")
    p.add_argument(
        "--json", action="store_true",
        help="print everything as JSON (the whole configuration; the first K steps with --steps)",
    )  # fmt: skip
    p.set_defaults(func=_show)

    p = actions.add_parser(
        "delete", parents=[db], help="delete episodes and their steps (no prompt)"
    )
    p.add_argument(
        "episodes", type=int, nargs="+", metavar="N", help="IDs of the episodes to delete"
    )
    p.add_argument(
        "--force", action="store_true",
        help="also delete an episode still marked running (a recorder may be writing it)",
    )  # fmt: skip
    p.set_defaults(func=_delete)

    p = actions.add_parser(
        "export", parents=[db],
        help="export an episode to a directory (frames/*.jpg, steps.csv, episode.json), "
        "copy it into another database (--out FILE.sqlite), or export episodes as a "
        "LeRobot dataset (--format lerobot)",
    )  # fmt: skip
    p.add_argument(
        "episodes", type=int, nargs="*", metavar="N",
        help="the episode's ID (malpi episodes list); for --format lerobot any number "
        "(default: every ended episode)",
    )  # fmt: skip
    p.add_argument(
        "--out", type=Path, required=True, metavar="DIR|FILE.sqlite",
        help="a new directory, or an episode database (.sqlite/.sqlite3/.db) to copy into",
    )  # fmt: skip
    p.add_argument(
        "--format", choices=("dir", "sqlite", "lerobot"), default=None,
        help="dir: frames, steps.csv, episode.json; sqlite: copy into a database; lerobot: a "
        "LeRobotDataset v3.0 (parquet + mp4; needs malpi[data]). Default: sqlite for a "
        ".sqlite/.sqlite3/.db --out, else dir",
    )  # fmt: skip
    p.add_argument(
        "--all", action="store_true",
        help="lerobot: every ended episode (the default when no N is given)",
    )  # fmt: skip
    p.add_argument(
        "--task", default=None, metavar="TEXT",
        help='lerobot: the task string every episode carries (default: "drive the track")',
    )  # fmt: skip
    p.add_argument(
        "--repo-id", default=None, metavar="NAME",
        help="lerobot: the Hub dataset name (user/name), written into the dataset card",
    )  # fmt: skip
    p.add_argument(
        "--fps", type=int, default=None, metavar="N",
        help="lerobot: frames per second (default: the episodes' recorded control rate)",
    )  # fmt: skip
    p.add_argument(
        "--vcodec", choices=("av1", "h264"), default="av1",
        help="lerobot: the video codec (av1, LeRobot's default, or h264)",
    )  # fmt: skip
    p.set_defaults(func=_export)

    p = actions.add_parser(
        "import-donkey",
        help="import DonkeyCar tubs (v2, or v1) into an episode database",
        description="DonkeyCar tubs into an episode database: one episode per session, frames "
        "resized to the policy's input, each angle/throttle mapped to the nearest action (the "
        "values themselves kept). All or nothing; sessions imported before are left as they "
        "are. See docs/data.md.",
    )  # fmt: skip
    p.add_argument("tubs", type=Path, nargs="+", metavar="TUB", help="DonkeyCar tub directories")
    p.add_argument(
        "--out", type=Path, required=True, metavar="DB",
        help="the episode database to import into (created if missing)",
    )  # fmt: skip
    p.add_argument(
        "--policy", type=Path, default=None, metavar="BUNDLE",
        help="the policy bundle whose image size and action table to use "
        "(default: the shipped default policy)",
    )  # fmt: skip
    p.add_argument(
        "--actions", type=Path, default=None, metavar="FILE",
        help="a TOML or JSON file with an [[actions]] list to map onto instead of the "
        "policy's action table",
    )  # fmt: skip
    p.set_defaults(func=_import_donkey)


def _open(args: argparse.Namespace, *, readonly: bool = True) -> Any:
    from malpi.recorder.store import EpisodeStore

    if args.db is None:
        # The same file the daemon records to (its configuration's, or the default).
        from malpi.config import find_config, load_config

        args.db = Path(load_config(find_config()).recording.path).expanduser()
    # Read-only unless deleting: looking at the car's recordings never changes them.
    return EpisodeStore(args.db, readonly=readonly)


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _outcome(info: Any) -> str:
    if info.final_reward is None:
        return info.outcome
    return f"{info.outcome} ({info.final_reward:+g})"


def _rate(info: Any) -> str:
    return f"{(info.step_count - 1) / info.duration:.1f}" if info.duration > 0 else "-"


def _list(args: argparse.Namespace) -> int:
    with _open(args) as store:
        episodes = store.episodes()
    if not episodes:
        print(f"no episodes in {args.db}")
        return 0
    header = ("ID", "STARTED", "STEPS", "DROPPED", "DURATION", "HZ", "OUTCOME", "POLICY", "NOTES")
    rows = [
        (str(e.id), _when(e.started_at), str(e.step_count), str(e.dropped_steps),
         f"{e.duration:.1f} s", _rate(e), _outcome(e), e.policy_version or "-", e.notes)
        for e in episodes
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {0, 2, 3, 4, 5}
    for r in [header, *rows]:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    total = sum(e.step_count for e in episodes)
    size = sum(p.stat().st_size for p in args.db.parent.glob(args.db.name + "*") if p.is_file())
    print(f"{len(episodes)} episodes, {total} steps, {size / 1e6:.1f} MB on disk")
    return 0


def _show(args: argparse.Namespace) -> int:
    with _open(args) as store:
        info = store.episode(args.episode)
        steps = list(store.iter_steps(args.episode, decode=False))
    facts = _episode_facts(info, steps)
    names = info.action_table.names
    shown = steps[: args.steps] if args.steps > 0 else []
    if args.json:
        facts["steps"] = [
            {"step": s.step, "capture_time": s.capture_time, "action_time": s.action_time,
             "action": s.action, "source": s.source, "probs": _floats(s.probs), "value": s.value,
             "reward": s.reward, "done": s.done, "policy_version": s.policy_version}
            for s in shown
        ]  # fmt: skip
        print(json.dumps(facts, indent=2))
        return 0
    print("\n".join(_episode_text(info, facts)))
    if shown:
        print()
        print(
            f"{'STEP':>6}  {'T (s)':>8}  {'ACTION':<12}  {'SOURCE':<12}  {'P(A)':>6}  {'VALUE':>8}  {'REWARD':>8}  DONE"
        )
        t0 = steps[0].capture_time
        for s in shown:
            p = f"{s.probs[s.action]:.3f}" if s.probs is not None else "-"
            v = f"{s.value:+.3f}" if s.value is not None else "-"
            name = names[s.action] if 0 <= s.action < len(names) else str(s.action)
            print(f"{s.step:>6}  {s.capture_time - t0:>8.3f}  {name:<12}  {s.source:<12}  {p:>6}  "
                  f"{v:>8}  {s.reward:>+8.3f}  {'yes' if s.done else ''}")  # fmt: skip
    return 0


def _floats(values: Any) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def _episode_facts(info: Any, steps: list[Any]) -> dict[str, Any]:
    """Everything ``episodes show`` says about an episode, JSON-ready (``--json`` prints it)."""
    import numpy as np

    def ms(values: Any) -> dict[str, float]:
        return {
            "median": round(float(np.median(values)) * 1e3, 2),
            "p99": round(float(np.percentile(values, 99)) * 1e3, 2),
            "max": round(float(np.max(values)) * 1e3, 2),
        }

    facts: dict[str, Any] = {
        "id": info.id, "uuid": info.uuid, "started_at": info.started_at,
        "ended_at": info.ended_at, "outcome": info.outcome, "terminated": info.terminated,
        "final_reward": info.final_reward, "policy_version": info.policy_version,
        "notes": info.notes, "step_count": info.step_count, "dropped_steps": info.dropped_steps,
        "duration_s": round(info.duration, 3),
        "rate_hz": round((info.step_count - 1) / info.duration, 2) if info.duration > 0 else None,
        "action_table": info.action_table.to_list(), "config": info.config,
    }  # fmt: skip
    if not steps:
        return facts
    actions = Counter(s.action for s in steps)
    rewards = np.array([s.reward for s in steps])
    taken = [float(s.probs[s.action]) for s in steps if s.probs is not None]
    values = [s.value for s in steps if s.value is not None]
    capture = np.array([s.capture_time for s in steps])
    facts.update(
        sources=dict(Counter(s.source for s in steps)),
        actions={n: actions.get(i, 0) for i, n in enumerate(info.action_table.names)},
        reward={"sum": float(rewards.sum()), "mean": float(rewards.mean()),
                "done_steps": sum(bool(s.done) for s in steps)},
        probs_steps=len(taken),
        mean_prob_of_action_taken=float(np.mean(taken)) if taken else None,
        mean_value=float(np.mean(values)) if values else None,
        value_steps=len(values),
        # Between the captures of consecutive recorded frames (the loop's actual period).
        frame_interval_ms=ms(np.diff(capture)) if len(capture) > 1 else None,
        frame_to_action_ms=ms(np.array([s.action_time for s in steps]) - capture),
        frame_size=_frame_size(steps[0].jpeg),
        jpeg_mean_bytes=round(float(np.mean([len(s.jpeg) for s in steps]))),
    )  # fmt: skip
    return facts


def _episode_text(info: Any, f: dict[str, Any]) -> list[str]:
    from malpi.textout import fields, table

    def timing(t: dict[str, float]) -> str:
        return f"median {t['median']:.1f} ms, p99 {t['p99']:.1f} ms, max {t['max']:.1f} ms"

    rows: list[tuple[str, Any]] = [
        ("episode", f"{info.id}  (uuid {info.uuid})"),
        ("started", _when(info.started_at)),
        ("ended", _when(info.ended_at)),
        ("outcome", info.outcome + ("  (terminal)" if info.terminated else "")),
    ]
    if info.final_reward is not None:
        rows.append(("final reward", f"{info.final_reward:+g} on the last step"))
    rows.append(("policy", info.policy_version or "-"))
    if info.notes:
        rows.append(("notes", info.notes))
    rate = f"{f['rate_hz']:.1f} Hz" if f["rate_hz"] is not None else "- Hz"
    rows.append(
        (
            "steps",
            f"{info.step_count} ({info.dropped_steps} dropped), {info.duration:.2f} s, {rate}",
        )
    )
    n = info.step_count
    if "sources" in f:
        src = f["sources"]
        rows += [
            ("sources", ", ".join(f"{k} {src.get(k, 0)}" for k in ("human", "policy", "intervention"))),
            ("reward", f"sum {f['reward']['sum']:+.3f}, mean {f['reward']['mean']:+.4f}, "
                       f"done on {f['reward']['done_steps']} step(s)"),
        ]  # fmt: skip
        if f["probs_steps"]:
            rows.append(("probabilities", f"recorded on {f['probs_steps']} steps, mean "
                         f"probability of the action taken {f['mean_prob_of_action_taken']:.3f}"))  # fmt: skip
        if f["value_steps"]:
            rows.append(("value", f"mean {f['mean_value']:+.3f} over {f['value_steps']} steps"))
        if f["frame_interval_ms"]:
            rows.append(("frame interval", timing(f["frame_interval_ms"])))
        rows += [
            ("frame to action", timing(f["frame_to_action_ms"])),
            ("frames", f"{f['frame_size']}, JPEG mean {f['jpeg_mean_bytes'] / 1e3:.1f} KB"),
        ]
    rows.append(("config", _config_summary(info.config)))
    lines = fields(rows)
    counts = f.get("actions", {})
    lines += ["", "actions"]
    lines += table(
        ("", "steering", "throttle", "steps", "share"),
        (
            (a.name, f"{a.steering:+.2f}", f"{a.throttle:+.2f}", counts.get(a.name, 0),
             f"{100 * counts.get(a.name, 0) / n:.0f}%" if n and counts else "-")
            for a in info.action_table
        ),
        indent="  ",
    )  # fmt: skip
    return lines


def _config_summary(config: dict[str, Any]) -> str:
    """The daemon configuration an episode was recorded with, in a few words (all: --json)."""
    from malpi.textout import summary

    def section(name: str) -> dict[str, Any]:
        value = config.get(name)
        return value if isinstance(value, dict) else {}

    camera, drive, loop, policy = (section(n) for n in ("camera", "drivetrain", "loop", "policy"))
    parts = []
    if camera.get("backend"):
        size = f" {camera.get('width')}x{camera.get('height')}" if camera.get("width") else ""
        fps = f" at {camera['fps']:g} fps" if camera.get("fps") else ""
        track = section("sim").get("track_seed") if camera["backend"] == "sim" else None
        parts.append(
            f"camera {camera['backend']}{size}{fps}"
            + (f", track {track}" if track is not None else "")
        )
    if drive.get("backend"):
        parts.append(f"drivetrain {drive['backend']}")
    if loop.get("rate_hz"):
        trigger = f", trigger {loop['trigger']}" if loop.get("trigger") else ""
        parts.append(f"loop {loop['rate_hz']:g} Hz{trigger}")
    if policy.get("backend"):
        path = f", {policy['path']}" if policy.get("path") else ""
        parts.append(f"policy {policy['backend']}{path}")
    if not parts:
        return summary(config) if config else "-"
    return "\n".join([*parts, "(all of it: --json)"])


def _frame_size(jpeg: bytes) -> str:
    try:
        from malpi.recorder.codec import decode_jpeg

        h, w = decode_jpeg(jpeg).shape[:2]
    except (ImportError, ValueError) as exc:
        return f"size unknown ({exc})"
    return f"{w}x{h}"


def _delete(args: argparse.Namespace) -> int:
    from malpi.recorder.schema import StoreError

    with _open(args, readonly=False) as store:
        for episode_id in args.episodes:
            try:
                n = store.delete_episode(episode_id, force=args.force)
            except StoreError as exc:
                if args.force or not store.episode(episode_id).running:
                    raise
                raise StoreError(
                    f"{exc} with --force (malpi episodes delete {episode_id} --force)"
                ) from exc
            print(f"deleted episode {episode_id} ({n} steps)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from malpi.recorder.export import DATABASE_SUFFIXES, copy_episode, export_directory

    fmt = args.format or ("sqlite" if args.out.suffix.lower() in DATABASE_SUFFIXES else "dir")
    if fmt == "lerobot":
        return _export_lerobot(args)
    lerobot_only = [
        flag for flag, value in (("--all", args.all), ("--task", args.task),
                                 ("--repo-id", args.repo_id), ("--fps", args.fps))
        if value not in (None, False)
    ]  # fmt: skip
    if lerobot_only:
        raise ValueError(f"{', '.join(lerobot_only)}: only with --format lerobot")
    if len(args.episodes) != 1:
        raise ValueError(f"--format {fmt} exports one episode: give one N")
    (episode,) = args.episodes
    with _open(args) as store:
        if fmt == "sqlite":
            new_id = copy_episode(store, episode, args.out)
            print(f"copied episode {episode} into {args.out} as episode {new_id}")
        else:
            export_directory(store, episode, args.out)
            n = store.count_steps(episode)
            print(f"exported episode {episode} ({n} steps) to {args.out}")
    return 0


def _export_lerobot(args: argparse.Namespace) -> int:
    from malpi.recorder.lerobot import export_lerobot
    from malpi.recorder.lerobot_format import DEFAULT_TASK

    if args.all and args.episodes:
        raise ValueError("give episode IDs or --all, not both")
    with _open(args) as store:
        result = export_lerobot(
            store, args.episodes or None, args.out, task=args.task or DEFAULT_TASK,
            repo_id=args.repo_id, fps=args.fps, vcodec=args.vcodec,
        )  # fmt: skip
    skipped = f"; skipped {result.skipped} (running or empty)" if result.skipped else ""
    print(
        f"exported {len(result.episodes)} episodes ({result.frames} frames at {result.fps} fps, "
        f"{result.vcodec} video) to {result.out} as a LeRobot dataset{skipped}"
    )
    return 0


def _import_donkey(args: argparse.Namespace) -> int:
    from malpi.recorder.donkey import describe, import_tubs, policy_input

    if args.policy is None:
        from malpi.policy.store import shipped_policy

        args.policy = Path(str(shipped_policy()))
    image, actions, _ = policy_input(args.policy)
    if args.actions is not None:
        actions = _action_table(args.actions)
    result = import_tubs(args.tubs, args.out, actions, image)
    for line in describe(result):
        print(line)
    return 0


def _action_table(path: Path) -> Any:
    """An ``[[actions]]`` list from a TOML or JSON file (as ``malpi policy new --actions``)."""
    import tomllib

    from malpi.actions import ActionTable

    text = path.read_text()
    table = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    items = table.get("actions") if isinstance(table, dict) else table
    if not isinstance(items, list):
        raise ValueError(f"{path}: no [[actions]] list")
    return ActionTable.from_list(items)
