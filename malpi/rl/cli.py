"""``malpi rl cartpole|sim|robot`` and ``malpi bench rl``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from malpi.workers import add_ray_argument

log = logging.getLogger(__name__)


def register(commands, bench) -> None:
    p = commands.add_parser("rl", help="reinforcement learning with the recurrent policy")
    sub = p.add_subparsers(dest="rl_command", required=True, metavar="WHERE")

    cp = sub.add_parser("cartpole", help="train on CartPole with the velocities hidden")
    cp.add_argument(
        "--algo", choices=("ppo", "a2c", "drqn"), default="ppo", help="the learning algorithm"
    )
    cp.add_argument("--steps", type=int, default=100_000, help="environment steps")
    cp.add_argument("--seed", type=int, default=0, help="random seed")
    cp.add_argument(
        "--feedforward", action="store_true", help="a feed-forward layer instead of the LSTM"
    )
    cp.add_argument("--episodes", type=int, default=100, help="evaluation episodes at the end")
    cp.add_argument("--out", help="write the trained policy as a bundle")
    cp.set_defaults(func=cmd_cartpole)

    sim = sub.add_parser("sim", help="fine-tune an image policy with PPO in the simulator")
    sim.add_argument("--policy", required=True, help="the bundle to start from")
    sim.add_argument("--out", required=True, help="bundle to write")
    sim.add_argument("--steps", type=int, default=50_000, help="environment steps in all")
    sim.add_argument("--envs", type=int, default=4, help="simulators run side by side")
    sim.add_argument("--rollout", type=int, default=128, help="steps per environment per update")
    sim.add_argument("--seq-len", type=int, default=32, help=SEQ_LEN)
    sim.add_argument("--epochs", type=int, default=4, help=EPOCHS)
    sim.add_argument("--minibatches", type=int, default=4, help="minibatches per epoch")
    sim.add_argument("--lr", type=float, default=1e-4, help="learning rate (Adam)")
    sim.add_argument("--ent-coef", type=float, default=0.003, help="weight of the entropy bonus")
    sim.add_argument("--max-steps", type=int, default=500, help="episode length limit")
    sim.add_argument("--time-reward", type=float, default=0.0, help="reward added every step")
    sim.add_argument(
        "--departure-penalty", type=float, default=-5.0, help="reward on leaving the track"
    )
    sim.add_argument(
        "--value-warmup", type=int, default=2, help="updates training only the value head first"
    )
    sim.add_argument("--seed", type=int, default=0, help="random seed")
    add_ray_argument(sim)
    sim.set_defaults(func=cmd_sim)

    robot = sub.add_parser(
        "robot",
        help="learn off-line from a robot's recorded episodes, push, repeat",
        description=(
            "Push --policy (unless the robot runs it already), drive N episodes with it in auto "
            "mode, pull them over the link, update with importance-corrected PPO, push the new "
            "bundle, repeat. Rewards are the robot's: its [reward] configuration."
        ),
    )
    robot.add_argument("host", help="the robot (HOST, HOST:PORT or tcp://HOST:PORT)")
    robot.add_argument(
        "--policy",
        required=True,
        metavar="BUNDLE",
        help="the bundle to start from: the one the robot runs, or one to push first",
    )
    robot.add_argument(
        "--db",
        default="robot-episodes.sqlite",
        help="local database the driven episodes are pulled into (default robot-episodes.sqlite)",
    )
    robot.add_argument(
        "--iterations", type=int, default=10, help="rounds of drive, pull, update, push"
    )
    robot.add_argument("--episodes", type=int, default=4, help="episodes per iteration")
    robot.add_argument(
        "--episode-seconds", type=float, default=20.0, help="end an episode after this long"
    )
    robot.add_argument("--epochs", type=int, default=4, help=EPOCHS)
    robot.add_argument("--seq-len", type=int, default=32, help=SEQ_LEN)
    robot.add_argument("--lr", type=float, default=1e-4, help="learning rate (Adam)")
    robot.add_argument("--out-dir", help="also keep every pushed bundle here")
    robot.add_argument("--insecure", action="store_true", help="plain link (no CURVE)")
    robot.add_argument("--keys", help="keys directory for CURVE")
    robot.set_defaults(func=cmd_robot)

    b = bench.add_parser(
        "rl", help="CartPole without velocities: recurrent PPO, feed-forward, DRQN, sb3"
    )
    b.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    b.add_argument(
        "--seeds", type=_seeds, default="0,1,2", help="seeds for the recurrent PPO, e.g. 0,1,2"
    )
    b.add_argument(
        "--control-seeds", type=_seeds, help="seeds for the other methods (default: the same)"
    )
    b.add_argument("--steps", type=int, default=100_000, help="environment steps per run")
    b.add_argument(
        "--eval-every", type=int, default=5_120, help="environment steps between evaluations"
    )
    b.add_argument("--episodes", type=int, default=100, help="episodes per evaluation")
    b.add_argument(
        "--full", action="store_true", help="train the whole budget even after reaching 475"
    )
    b.add_argument(
        "--methods",
        default="ppo_lstm,ppo_feedforward,drqn,sb3_recurrent_ppo",
        help="comma-separated; sb3_recurrent_ppo is skipped when sb3-contrib is not installed",
    )
    b.set_defaults(func=cmd_bench)


SEQ_LEN = "steps per training sequence (the LSTM's window)"
EPOCHS = "passes over each batch of experience"


def _seeds(text: str) -> list[int]:
    """Comma-separated integers, as an argparse ``type``."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of seeds")
    return seeds


def cmd_cartpole(args: argparse.Namespace) -> int:
    import dataclasses

    from malpi.policy.spec import PolicySpec
    from malpi.rl import drqn, ppo, tasks
    from malpi.rl.evaluate import evaluate

    spec = PolicySpec(**{**ppo.CARTPOLE_SPEC.__dict__, "recurrent": not args.feedforward})
    if args.algo == "drqn":
        cfg = dataclasses.replace(drqn.CARTPOLE_DRQN_CONFIG, seed=args.seed, total_steps=args.steps)
        result = drqn.train(tasks.cartpole_novel_fns(cfg.num_envs), spec, cfg)
    else:
        base = ppo.CARTPOLE_CONFIG if args.algo == "ppo" else ppo.PPOConfig.a2c(reward_scale=0.1)
        cfg = dataclasses.replace(base, seed=args.seed, total_steps=args.steps)
        result = ppo.train(tasks.cartpole_novel_fns(cfg.num_envs), spec, cfg)
    ev = evaluate(ppo.Actor(result.net, greedy=True), tasks.cartpole_novel, args.episodes)
    print(
        f"{args.algo}{' (feed-forward)' if args.feedforward else ''}: {result.steps} steps in "
        f"{result.wall_s:.0f} s; greedy return over {args.episodes} episodes "
        f"{ev.mean:.1f} +/- {ev.std:.1f}"
    )
    if args.out:
        from malpi.policy.export import make_bundle

        bundle = make_bundle(
            result.net,
            tasks.CARTPOLE_ACTIONS,
            provenance={
                "made_by": f"malpi rl cartpole --algo {args.algo}",
                "steps": result.steps,
                "eval_return": round(ev.mean, 1),
            },
        )
        bundle.save(args.out)
        print(f"wrote {args.out} ({bundle.label})")
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from malpi.rl.sim import SimFineTuneConfig, fine_tune

    cfg = SimFineTuneConfig(
        total_steps=args.steps,
        num_envs=args.envs,
        num_steps=args.rollout,
        seq_len=args.seq_len,
        epochs=args.epochs,
        minibatches=args.minibatches,
        learning_rate=args.lr,
        ent_coef=args.ent_coef,
        max_steps=args.max_steps,
        time_reward=args.time_reward,
        departure_penalty=args.departure_penalty,
        value_warmup=args.value_warmup,
        seed=args.seed,
    )
    bundle = fine_tune(args.policy, cfg, ray=args.ray)
    bundle.save(args.out)
    print(f"wrote {args.out} ({bundle.label})")
    return 0


def cmd_robot(args: argparse.Namespace) -> int:
    from malpi.rl.robot import RobotLoopConfig, run_robot_loop

    cfg = RobotLoopConfig.from_args(args)
    history = run_robot_loop(args.host, cfg)
    for it in history:
        print(
            f"iteration {it['iteration']}: {it['episodes']} episodes, {it['steps']} steps, "
            f"mean return {it['mean_return']:.2f}, pushed {it['pushed']}"
        )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from malpi.rl.bench import format_table, run_bench, sb3_available

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "sb3_recurrent_ppo" in methods and not sb3_available():
        log.warning("sb3-contrib is not installed: its RecurrentPPO is not measured")
        methods.remove("sb3_recurrent_ppo")
    report = run_bench(
        args.seeds,
        methods,
        steps=args.steps,
        eval_every=args.eval_every,
        episodes=args.episodes,
        control_seeds=args.control_seeds,
        stop_at_target=not args.full,
    )
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0
