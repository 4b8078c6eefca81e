"""``malpi policy new|info`` and ``malpi bench policy``."""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path


def register(commands, bench) -> None:
    p = commands.add_parser("policy", help="make and inspect policy bundles")
    sub = p.add_subparsers(dest="policy_command", required=True, metavar="ACTION")

    new = sub.add_parser("new", help="a fresh (untrained) policy bundle from a spec")
    new.add_argument("--out", required=True, help="bundle file to write")
    new.add_argument(
        "--spec", help="TOML or JSON file with spec fields (default: the default spec)"
    )
    new.add_argument(
        "--seed-architecture",
        action="store_true",
        help="use the seed post's 5.9 M-parameter architecture",
    )
    new.add_argument(
        "--actions", help="TOML or JSON file with an [[actions]] list (default: the built-in table)"
    )
    new.add_argument("--seed", type=int, default=0, help="random seed for the initial weights")
    new.set_defaults(func=cmd_new)

    info = sub.add_parser("info", help="validate a bundle and print its manifest")
    info.add_argument("bundle", help="the policy bundle (.malpi) to validate and describe")
    info.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    info.set_defaults(func=cmd_info)

    b = bench.add_parser(
        "policy",
        help="per-step policy latency: explicit-state step vs window re-run, "
        "on LiteRT (float, dynamic-range, integer) and TensorFlow",
    )
    b.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    b.add_argument("--steps", type=int, default=300, help="timed steps per measurement")
    b.add_argument("--warmup", type=int, default=50, help="untimed steps first, per measurement")
    b.add_argument(
        "--arch",
        choices=("both", "default", "seed"),
        default="both",
        help="which architecture(s) to measure (default: both)",
    )
    b.set_defaults(func=cmd_bench)


def _read_table(path: str) -> dict:
    text = Path(path).read_text()
    return json.loads(text) if path.endswith(".json") else tomllib.loads(text)


def cmd_new(args: argparse.Namespace) -> int:
    from malpi.actions import DEFAULT_ACTIONS, ActionTable
    from malpi.policy.spec import DEFAULT_SPEC, SEED_SPEC, PolicySpec

    actions = DEFAULT_ACTIONS
    if args.actions:
        actions = ActionTable.from_list(_read_table(args.actions).get("actions", []))
    if args.spec:
        fields = _read_table(args.spec)
        fields = fields.get("spec", fields)
        fields.setdefault("num_actions", len(actions))
        spec = PolicySpec.from_dict(fields)
    else:
        base = SEED_SPEC if args.seed_architecture else DEFAULT_SPEC
        spec = PolicySpec.from_dict({**base.to_dict(), "num_actions": len(actions)})

    from malpi.policy.export import make_bundle
    from malpi.policy.model import build_policy

    net = build_policy(spec, seed=args.seed)
    bundle = make_bundle(
        net, actions, provenance={"made_by": "malpi policy new", "init_seed": args.seed}
    )
    bundle.save(args.out)
    print(f"wrote {args.out}: {bundle.label}, {spec.params:,} parameters, {len(actions)} actions")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from malpi.policy.bundle import PolicyBundle

    bundle = PolicyBundle.load(args.bundle)
    m = bundle.manifest
    if args.json:
        print(json.dumps(m, indent=2, sort_keys=True))
        return 0
    spec = bundle.spec
    obs = "x".join(map(str, spec.observation_shape))
    print(f"bundle      {args.bundle}  (valid)")
    print(f"policy      {bundle.label}  parent={m['parent']}  created={m['created']}")
    print(f"identity    sha256 {bundle.sha256}")
    rate = f"{bundle.control_hz:g} Hz" if bundle.control_hz else "unknown (any loop.rate_hz)"
    print(f"trained at  {rate}")
    if spec.is_image:
        print(
            f"input       {obs} image  conv={[(c.filters, c.kernel, c.stride) for c in spec.conv]}"
        )
    else:
        print(f"input       vector of {spec.obs_dim}")
    core = f"lstm={spec.lstm_units}" if spec.recurrent else f"feedforward={spec.lstm_units}"
    print(
        f"network     bottleneck={spec.bottleneck} {core}  params={spec.params:,}  macs/step={spec.macs_per_step:,}"
    )
    from malpi.textout import summary_fields, table

    print("actions")
    rows = [
        (i, a.name, f"{a.steering:+.2f}", f"{a.throttle:+.2f}")
        for i, a in enumerate(bundle.actions)
    ]
    print("\n".join(table(("", "", "steering", "throttle"), rows, indent="  ")))
    for name, p in sorted(m["payloads"].items()):
        print(f"payload     {name:<21}{p['bytes']:>10,} bytes  sha256 {p['sha256'][:16]}…")
    # Training records can be long (a DAgger history): summarised here, whole with --json.
    print("provenance  (in brief; all of it: --json)")
    print("\n".join(summary_fields(dict(sorted(m["provenance"].items())), indent="  ")))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from malpi.policy import bench

    archs = ("default", "seed") if args.arch == "both" else (args.arch,)
    bench.run(steps=args.steps, warmup=args.warmup, architectures=archs, json_path=args.json)
    return 0
