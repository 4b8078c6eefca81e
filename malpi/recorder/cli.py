"""``malpi episodes list|show|delete|export --db PATH``: the recorded episodes from a shell."""

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
    p.add_argument("episode", type=int, metavar="N")
    p.add_argument("--steps", type=int, default=0, metavar="K", help="also print the first K steps")
    p.set_defaults(func=_show)

    p = actions.add_parser(
        "delete", parents=[db], help="delete episodes and their steps (no prompt)"
    )
    p.add_argument("episodes", type=int, nargs="+", metavar="N")
    p.add_argument(
        "--force", action="store_true",
        help="also delete an episode still marked running (a recorder may be writing it)",
    )  # fmt: skip
    p.set_defaults(func=_delete)

    p = actions.add_parser(
        "export", parents=[db],
        help="export an episode to a directory (frames/*.jpg, steps.csv, episode.json) "
        "or copy it into another database (--out FILE.sqlite)",
    )  # fmt: skip
    p.add_argument("episode", type=int, metavar="N")
    p.add_argument(
        "--out", type=Path, required=True, metavar="DIR|FILE.sqlite",
        help="a new directory, or an episode database (.sqlite/.sqlite3/.db) to copy into",
    )  # fmt: skip
    p.set_defaults(func=_export)


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
    import numpy as np

    with _open(args) as store:
        info = store.episode(args.episode)
        steps = list(store.iter_steps(args.episode, decode=False))
    names = info.action_table.names
    print(f"episode {info.id}   uuid {info.uuid}")
    print(f"started   {_when(info.started_at)}")
    print(f"ended     {_when(info.ended_at)}")
    print(f"outcome   {info.outcome}" + ("  (terminal)" if info.terminated else ""))
    if info.final_reward is not None:
        print(f"final     reward {info.final_reward:+g} on the last step")
    print(f"policy    {info.policy_version or '-'}")
    if info.notes:
        print(f"notes     {info.notes}")
    print(
        f"steps     {info.step_count} ({info.dropped_steps} dropped), "
        f"{info.duration:.2f} s, {_rate(info)} Hz"
    )
    if steps:
        sources = Counter(s.source for s in steps)
        print(
            "sources   "
            + ", ".join(f"{k} {sources.get(k, 0)}" for k in ("human", "policy", "intervention"))
        )
        actions = Counter(s.action for s in steps)
        print("actions   " + ", ".join(
            f"{n} {actions.get(i, 0)} ({100 * actions.get(i, 0) / len(steps):.0f}%)"
            for i, n in enumerate(names)
        ))  # fmt: skip
        rewards = np.array([s.reward for s in steps])
        print(f"reward    sum {rewards.sum():+.3f}, mean {rewards.mean():+.4f}, "
              f"done on {sum(s.done for s in steps)} step(s)")  # fmt: skip
        with_probs = [s for s in steps if s.probs is not None]
        if with_probs:
            taken = np.mean([s.probs[s.action] for s in with_probs])
            print(f"probs     recorded on {len(with_probs)} steps, "
                  f"mean probability of the action taken {taken:.3f}")  # fmt: skip
        values = [s.value for s in steps if s.value is not None]
        if values:
            print(f"value     mean {np.mean(values):+.3f} over {len(values)} steps")
        capture = np.array([s.capture_time for s in steps])
        latency = np.array([s.action_time for s in steps]) - capture
        if len(capture) > 1:
            period = np.diff(capture) * 1e3
            print(f"period    median {np.median(period):.1f} ms, p99 {np.percentile(period, 99):.1f} ms, "
                  f"max {period.max():.1f} ms")  # fmt: skip
        print(f"latency   frame to action median {np.median(latency) * 1e3:.1f} ms, "
              f"p99 {np.percentile(latency, 99) * 1e3:.1f} ms")  # fmt: skip
        print(f"frames    {_frame_size(steps[0].jpeg)}, "
              f"JPEG mean {np.mean([len(s.jpeg) for s in steps]) / 1e3:.1f} KB")  # fmt: skip
    print("table     " + ", ".join(
        f"{a.name} (steer {a.steering:+g}, throttle {a.throttle:+g})" for a in info.action_table
    ))  # fmt: skip
    print("config    " + (json.dumps(info.config, sort_keys=True) if info.config else "{}"))
    if args.steps > 0 and steps:
        print()
        print(
            f"{'STEP':>6}  {'T (s)':>8}  {'ACTION':<12}  {'SOURCE':<12}  {'P(A)':>6}  {'VALUE':>8}  {'REWARD':>8}  DONE"
        )
        t0 = steps[0].capture_time
        for s in steps[: args.steps]:
            p = f"{s.probs[s.action]:.3f}" if s.probs is not None else "-"
            v = f"{s.value:+.3f}" if s.value is not None else "-"
            name = names[s.action] if 0 <= s.action < len(names) else str(s.action)
            print(f"{s.step:>6}  {s.capture_time - t0:>8.3f}  {name:<12}  {s.source:<12}  {p:>6}  "
                  f"{v:>8}  {s.reward:>+8.3f}  {'yes' if s.done else ''}")  # fmt: skip
    return 0


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

    with _open(args) as store:
        if args.out.suffix.lower() in DATABASE_SUFFIXES:
            new_id = copy_episode(store, args.episode, args.out)
            print(f"copied episode {args.episode} into {args.out} as episode {new_id}")
        else:
            export_directory(store, args.episode, args.out)
            n = store.count_steps(args.episode)
            print(f"exported episode {args.episode} ({n} steps) to {args.out}")
    return 0
