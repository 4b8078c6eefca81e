"""``malpi bench rl``: CartPole with velocities hidden, side by side.

Every method is judged the same way: every ``eval_every`` environment steps of
training, 100 evaluation episodes (env ``i`` reset with seed ``10000 + i``,
greedy / deterministic actions); "steps to 475" is the training step count at
the first evaluation whose mean return is at least 475. Wall time counts
training only (evaluation is measurement, not learning). A run that reaches the
target stops there; one that does not runs its whole budget.

Methods: recurrent PPO on MaLPi's policy network (the target: all seeds within
100,000 steps); the same with a feed-forward layer in place of the LSTM (the
control: memory is needed); the DRQN; and, when sb3-contrib is installed, its
RecurrentPPO configured exactly as rl-zoo publishes it for CartPoleNoVel-v1
(``RL_ZOO_SOURCE``: its environment, hyper-parameters, VecNormalize of
observations and rewards, evaluation with frozen statistics). MaLPi's PPO uses
rl-zoo's settings with its own deviations (``ppo.CARTPOLE_CONFIG``: a fixed
reward scale of 0.1 and fixed observation scaling instead of VecNormalize, one
LSTM shared by actor and critic).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from malpi.rl import tasks
from malpi.rl.evaluate import BatchPolicy, evaluate

log = logging.getLogger(__name__)

TARGET = tasks.SOLVED_RETURN


@dataclass
class Run:
    method: str
    seed: int
    steps_to_475: int | None = None
    wall_s: float | None = None  # training time until the target was reached (None: never)
    train_wall_s: float = 0.0  # all training time spent
    steps: int = 0
    best_eval: float = float("-inf")
    final_eval: float = float("nan")
    curve: list[tuple[int, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["curve"] = [[s, round(r, 1)] for s, r in self.curve]
        for key in ("wall_s", "train_wall_s", "best_eval", "final_eval"):
            if d[key] is not None:
                d[key] = round(d[key], 1)
        return d


class Judge:
    """Evaluates a policy during training and keeps the record of one run."""

    def __init__(
        self,
        run: Run,
        episodes: int,
        env_fn: Callable[[], Any] = tasks.cartpole_novel,
        stop_at_target: bool = True,
    ):
        self.run = run
        self.env_fn = env_fn
        self.episodes = episodes
        self.stop_at_target = stop_at_target
        self.eval_s = 0.0

    def __call__(self, steps: int, train_wall_s: float, policy: BatchPolicy) -> bool:
        t = time.perf_counter()
        mean = evaluate(policy, self.env_fn, self.episodes).mean
        self.eval_s += time.perf_counter() - t
        run = self.run
        run.curve.append((steps, mean))
        run.best_eval = max(run.best_eval, mean)
        run.final_eval = mean
        run.steps, run.train_wall_s = steps, train_wall_s
        log.info("%s seed %d: %d steps, eval return %.1f", run.method, run.seed, steps, mean)
        if mean >= TARGET and run.steps_to_475 is None:
            run.steps_to_475, run.wall_s = steps, train_wall_s
            return self.stop_at_target
        return False


def run_ppo(
    seed: int, steps: int, eval_every: int, episodes: int, stop: bool = True, recurrent: bool = True
) -> Run:
    from malpi.policy.spec import PolicySpec
    from malpi.rl import ppo

    method = "ppo_lstm" if recurrent else "ppo_feedforward"
    judge = Judge(Run(method, seed), episodes, stop_at_target=stop)
    cfg = dataclasses.replace(ppo.CARTPOLE_CONFIG, seed=seed, total_steps=steps, log_every=50)
    spec = PolicySpec(**{**ppo.CARTPOLE_SPEC.__dict__, "recurrent": recurrent})
    per_update = cfg.num_steps * cfg.num_envs
    every = max(1, eval_every // per_update)

    def callback(p: ppo.Progress) -> bool:
        if p.updates % every:
            return False
        return judge(p.steps, p.wall_s - judge.eval_s, ppo.Actor(p.net, greedy=True))

    result = ppo.train(tasks.cartpole_novel_fns(cfg.num_envs), spec, cfg, callback=callback)
    if judge.run.steps != result.steps:  # the budget ended between evaluations
        judge(result.steps, result.wall_s - judge.eval_s, ppo.Actor(result.net, greedy=True))
    return judge.run


def run_drqn(seed: int, steps: int, eval_every: int, episodes: int, stop: bool = True) -> Run:
    from malpi.rl import drqn, ppo

    judge = Judge(Run("drqn", seed), episodes, stop_at_target=stop)
    cfg = dataclasses.replace(drqn.CARTPOLE_DRQN_CONFIG, seed=seed, total_steps=steps)

    def callback(p: ppo.Progress) -> bool:
        return judge(p.steps, p.wall_s - judge.eval_s, ppo.Actor(p.net, greedy=True))

    result = drqn.train(
        tasks.cartpole_novel_fns(cfg.num_envs),
        ppo.CARTPOLE_SPEC,
        cfg,
        callback=callback,
        callback_every=eval_every,
    )
    if judge.run.steps != result.steps:
        judge(result.steps, result.wall_s - judge.eval_s, ppo.Actor(result.net, greedy=True))
    return judge.run


def sb3_available() -> bool:
    try:
        import sb3_contrib  # noqa: F401
    except ImportError:
        return False
    return True


# rl-zoo's RecurrentPPO entry for CartPoleNoVel-v1, as published: rl-baselines3-zoo
# (github.com/DLR-RM/rl-baselines3-zoo) at commit 22e3ff2450fd92033f7f032915e1f64894a09584,
# hyperparams/ppo_lstm.yml (entry unchanged since it was added in 139477b), applied as
# rl_zoo3/exp_manager.py applies it:
# - ``normalize: True`` -> ``VecNormalize(env, gamma=<the algorithm's gamma>)`` with its defaults
#   otherwise (norm_obs and norm_reward True, clip_obs 10, clip_reward 10, epsilon 1e-8):
#   ``_preprocess_normalization`` copies ``gamma`` into the VecNormalize kwargs;
# - ``lin_X`` -> ``SimpleLinearSchedule(X)``: ``progress_remaining * X`` (``_preprocess_schedules``);
# - the evaluation env is a VecNormalize with ``norm_reward=False, training=False`` whose
#   statistics the EvalCallback copies from the training env before each evaluation
#   (``_maybe_normalize``; sb3's ``sync_envs_normalization``);
# - the environment: CartPoleNoVel-v1 is ``gym.make("CartPole-v1")`` (500-step limit) wrapped in
#   ``MaskVelocityWrapper`` (rl_zoo3/import_envs.py, rl_zoo3/wrappers.py), which multiplies the
#   observation by [1, 0, 1, 0]: the velocities are zeroed, not removed, and nothing is scaled.
RL_ZOO_SOURCE = (
    "rl-baselines3-zoo 22e3ff2450fd92033f7f032915e1f64894a09584, hyperparams/ppo_lstm.yml "
    "CartPoleNoVel-v1, normalisation and evaluation as in rl_zoo3/exp_manager.py"
)
RL_ZOO_CARTPOLE_NOVEL: dict[str, Any] = {  # the entry's values, as published
    "normalize": True,
    "n_envs": 8,
    "n_timesteps": 100_000,
    "policy": "MlpLstmPolicy",
    "n_steps": 32,
    "batch_size": 256,
    "gae_lambda": 0.8,
    "gamma": 0.98,
    "n_epochs": 20,
    "ent_coef": 0.0,
    "learning_rate": "lin_0.001",
    "clip_range": "lin_0.2",
    "policy_kwargs": "dict(ortho_init=False, activation_fn=nn.ReLU, lstm_hidden_size=64, "
    "enable_critic_lstm=True, net_arch=dict(pi=[64], vf=[64]))",
}


class SimpleLinearSchedule:
    """rl-zoo's ``lin_X``: ``progress_remaining * X`` (1 at the start of training, 0 at the end)."""

    def __init__(self, initial_value: float | str):
        self.initial_value = float(initial_value)

    def __call__(self, progress_remaining: float) -> float:
        return progress_remaining * self.initial_value

    def __repr__(self) -> str:
        return f"SimpleLinearSchedule(initial_value={self.initial_value})"


def _schedule(text: str) -> SimpleLinearSchedule:
    kind, initial = text.split("_")
    assert kind == "lin", text
    return SimpleLinearSchedule(initial)


class MaskVelocity(gym.ObservationWrapper):
    """rl-zoo's ``MaskVelocityWrapper`` on CartPole-v1: the observation times [1, 0, 1, 0]."""

    MASK = np.array([1.0, 0.0, 1.0, 0.0], np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation * self.MASK


def rlzoo_cartpole_novel() -> gym.Env:
    """rl-zoo's CartPoleNoVel-v1: CartPole-v1 (500 steps), velocities zeroed, nothing scaled."""
    return MaskVelocity(gym.make("CartPole-v1"))


class SB3Policy:
    """sb3-contrib's RecurrentPPO as a :class:`BatchPolicy` (normalised observations, deterministic).

    ``normalizer`` is the evaluation VecNormalize (frozen statistics, rewards not normalised).
    """

    def __init__(self, model, normalizer):
        self.model, self.normalizer = model, normalizer
        self.state = None

    def reset(self, n: int) -> None:
        self.state = None

    def act(self, obs: np.ndarray, starts: np.ndarray) -> np.ndarray:
        actions, self.state = self.model.predict(
            self.normalizer.normalize_obs(obs),
            state=self.state,
            episode_start=np.asarray(starts, bool),
            deterministic=True,
        )
        return actions


def make_sb3(seed: int):
    """RecurrentPPO, its training VecNormalize and its evaluation VecNormalize, as rl-zoo builds them.

    Returns ``(model, venv, eval_norm)``; ``eval_norm`` is to be synchronised from ``venv``
    (``sync_envs_normalization``) before each evaluation.
    """
    import torch
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.utils import set_random_seed
    from stable_baselines3.common.vec_env import VecNormalize

    hp = RL_ZOO_CARTPOLE_NOVEL
    assert hp["normalize"] is True and hp["policy"] == "MlpLstmPolicy"
    # Measurement, not learning: one thread (a small network; the benchmark runs pinned to a core).
    torch.set_num_threads(1)
    set_random_seed(seed)  # rl_zoo3/train.py
    # normalize: True, and exp_manager passes the algorithm's gamma to VecNormalize.
    normalize_kwargs = dict(gamma=hp["gamma"])
    venv = VecNormalize(
        make_vec_env(rlzoo_cartpole_novel, n_envs=hp["n_envs"], seed=seed), **normalize_kwargs
    )
    eval_norm = VecNormalize(
        make_vec_env(rlzoo_cartpole_novel, n_envs=1, seed=seed),
        **{**normalize_kwargs, "norm_reward": False, "training": False},
    )
    model = RecurrentPPO(
        hp["policy"],
        venv,
        n_steps=hp["n_steps"],
        batch_size=hp["batch_size"],
        gae_lambda=hp["gae_lambda"],
        gamma=hp["gamma"],
        n_epochs=hp["n_epochs"],
        ent_coef=hp["ent_coef"],
        learning_rate=_schedule(hp["learning_rate"]),
        clip_range=_schedule(hp["clip_range"]),
        policy_kwargs=dict(  # hp["policy_kwargs"], evaluated
            ortho_init=False,
            activation_fn=torch.nn.ReLU,
            lstm_hidden_size=64,
            enable_critic_lstm=True,
            net_arch=dict(pi=[64], vf=[64]),
        ),
        seed=seed,
        device="cpu",
        verbose=0,
    )
    return model, venv, eval_norm


def run_sb3(seed: int, steps: int, eval_every: int, episodes: int, stop: bool = True) -> Run:
    """RecurrentPPO configured exactly as rl-zoo publishes it for CartPoleNoVel-v1 (see above)."""
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import sync_envs_normalization

    judge = Judge(
        Run("sb3_recurrent_ppo", seed), episodes, rlzoo_cartpole_novel, stop_at_target=stop
    )
    model, venv, eval_norm = make_sb3(seed)

    def evaluate_now(num_timesteps: int) -> bool:
        sync_envs_normalization(venv, eval_norm)  # as rl-zoo's EvalCallback: frozen copy
        return judge(
            num_timesteps, time.perf_counter() - t0 - judge.eval_s, SB3Policy(model, eval_norm)
        )

    class Every(BaseCallback):
        next_at = eval_every

        def _on_step(self) -> bool:
            if self.num_timesteps < self.next_at:
                return True
            self.next_at += eval_every
            return not evaluate_now(self.num_timesteps)

    t0 = time.perf_counter()
    model.learn(total_timesteps=steps, callback=Every())
    if judge.run.steps < model.num_timesteps:  # the budget ended between evaluations
        evaluate_now(model.num_timesteps)
    return judge.run


METHODS: dict[str, Callable[..., Run]] = {
    "ppo_lstm": run_ppo,
    "ppo_feedforward": lambda *a, **k: run_ppo(*a, **k, recurrent=False),
    "drqn": run_drqn,
    "sb3_recurrent_ppo": run_sb3,
}


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Per method: steps to 475 of the slowest seed (None if any seed missed), median, wall time."""
    reached = [r.steps_to_475 for r in runs if r.steps_to_475 is not None]
    walls = [r.wall_s for r in runs if r.wall_s is not None]
    all_reached = len(reached) == len(runs)
    return {
        "seeds": [r.seed for r in runs],
        "reached": f"{len(reached)}/{len(runs)}",
        "steps_to_475": max(reached) if all_reached else None,
        "steps_to_475_median": float(np.median(reached)) if all_reached else None,
        "wall_s": round(max(walls), 1) if all_reached else None,
        "best_eval_mean": round(float(np.mean([r.best_eval for r in runs])), 1),
        "final_eval_mean": round(float(np.mean([r.final_eval for r in runs])), 1),
    }


def run_bench(
    seeds: list[int],
    methods: list[str],
    steps: int = 100_000,
    eval_every: int = 5_120,
    episodes: int = 100,
    control_seeds: list[int] | None = None,
    stop_at_target: bool = True,
) -> dict[str, Any]:
    """Run the methods; the JSON-ready report. ``control_seeds``: seeds for all but ppo_lstm.

    ``stop_at_target=False`` trains every run for the whole budget (does it stay solved?).
    """
    report: dict[str, Any] = {
        "task": "CartPole-v1, velocities hidden (cart position, pole angle)",
        "target_return": TARGET,
        "eval_episodes": episodes,
        "eval_every_steps": eval_every,
        "budget_steps": steps,
        "stop_at_target": stop_at_target,
        "methods": {},
    }
    for method in methods:
        these = seeds if method == "ppo_lstm" or control_seeds is None else control_seeds
        runs = [
            METHODS[method](seed, steps, eval_every, episodes, stop=stop_at_target)
            for seed in these
        ]
        report["methods"][method] = {**summarize(runs), "runs": [r.to_dict() for r in runs]}
    lstm = report["methods"].get("ppo_lstm")
    if lstm:
        report["steps_to_475"] = lstm["steps_to_475"]
        report["wall_s"] = lstm["wall_s"]
        report["steps_to_475_per_seed"] = [r["steps_to_475"] for r in lstm["runs"]]
    if "ppo_feedforward" in report["methods"]:
        report["feedforward"] = report["methods"]["ppo_feedforward"]
    if "drqn" in report["methods"]:
        report["drqn"] = report["methods"]["drqn"]
    sb3 = report["methods"].get("sb3_recurrent_ppo")
    if sb3:
        report["sb3_steps_to_475"] = sb3["steps_to_475"]
        report["sb3_wall_s"] = sb3["wall_s"]
        report["sb3_config"] = {"source": RL_ZOO_SOURCE, "hyperparams": RL_ZOO_CARTPOLE_NOVEL}
    return report


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['task']}: target mean return >= {report['target_return']:.0f} over "
        f"{report['eval_episodes']} episodes within {report['budget_steps']:,} steps "
        f"(evaluated every {report['eval_every_steps']:,})",
        "",
        f"{'method':<20} {'seed':>4} {'steps to 475':>13} {'wall s':>7} {'best':>6} {'last':>6}",
    ]
    for method, m in report["methods"].items():
        for r in m["runs"]:
            s475 = f"{r['steps_to_475']:,}" if r["steps_to_475"] is not None else "not reached"
            wall = f"{r['wall_s']:.0f}" if r["wall_s"] is not None else f"({r['train_wall_s']:.0f})"
            lines.append(
                f"{method:<20} {r['seed']:>4} {s475:>13} {wall:>7} {r['best_eval']:>6.1f} {r['final_eval']:>6.1f}"
            )
        s475 = f"{m['steps_to_475']:,}" if m["steps_to_475"] is not None else "-"
        wall = f"{m['wall_s']:.0f}" if m["wall_s"] is not None else "-"
        lines.append(
            f"{'  all seeds':<20} {m['reached']:>4} {s475:>13} {wall:>7} {m['best_eval_mean']:>6.1f} {m['final_eval_mean']:>6.1f}"
        )
    lines.append("")
    lines.append(
        "steps to 475 over seeds: the slowest seed; wall s: training time to reach it "
        "(in brackets: the whole budget, not reached)"
    )
    return "\n".join(lines)
