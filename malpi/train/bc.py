"""Many-to-many behaviour cloning of the recurrent policy.

The sequence model sees a sequence of frames and, at every step, the action
taken at the step before (teacher forcing: the real previous action, exactly
what the robot feeds its step model), and is trained with a cross-entropy loss
at *every* step against the target action, weighted per step (interventions up,
padding and warm-up steps out) and per class (rare actions up).

How a long episode's LSTM state is handled is ``TrainConfig.sequence.mode``
(see :mod:`malpi.train.data`): ``tbptt`` carries each lane's final state into
its next chunk (detached: truncated back-propagation), ``burnin`` starts each
window from a stored state and warms it up, ``zero`` starts every window from
nothing.

Around the loop: a ``tf.distribute`` strategy (gradients summed over
replicas, the loss normalised by the *global* step weight), Adam with a
cosine learning-rate decay and gradient clipping, validation after every
epoch on held-out episodes run start to end with the state carried (as the
robot runs), early stopping on the validation log-likelihood with the best
weights kept, a checkpoint every ``checkpoint_every`` batches and at every
epoch's end (weights, optimizer, position in the epoch, carried or stored
states) so an interrupted run resumes where it stopped, a progress bar, and
TensorBoard logs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from malpi.actions import ActionTable
from malpi.policy.bundle import PolicyBundle, write_atomic
from malpi.policy.spec import PolicySpec
from malpi.train.augment import Augmentation
from malpi.train.data import (
    FrameTable,
    SequenceConfig,
    StateTable,
    lane_plan,
    make_dataset,
    make_plan,
    num_window_slots,
)
from malpi.train.episodes import Episode, class_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    sequence: SequenceConfig = SequenceConfig()
    batch_size: int = 16  # sequences per global batch (TBPTT: lanes)
    epochs: int = 10
    steps_per_epoch: int = 0  # cap on batches per epoch; 0 = the whole plan
    learning_rate: float = 1e-3
    final_lr_fraction: float = 0.1  # cosine decay to this fraction over the epochs
    clipnorm: float = 1.0
    class_weight_power: float = 0.5  # 0 = none, 1 = inverse frequency
    patience: int = 3  # epochs without a better validation log-likelihood; 0 = never stop
    augmentation: Augmentation = Augmentation()
    checkpoint_every: int = 100  # batches
    log_every: int = 10  # batches
    val_length: int = 64  # chunk length when running validation episodes
    seed: int = 0
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        if "sequence" in d:
            d["sequence"] = SequenceConfig(**d["sequence"])
        if "augmentation" in d:
            d["augmentation"] = Augmentation(**d["augmentation"])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Progress:
    """Where training is; saved in every checkpoint."""

    epoch: int = 0  # the epoch in progress (or next)
    step: int = 0  # batches done in that epoch
    global_step: int = 0
    best_val_nll: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    curve: list[list[float]] = field(default_factory=list)  # [global_step, loss, accuracy]


class Trainer:
    """Trains one policy in ``workdir`` (checkpoints/, best.npz, history.json, logs/)."""

    def __init__(
        self,
        spec: PolicySpec,
        actions: ActionTable,
        config: TrainConfig,
        workdir: str | os.PathLike[str],
        strategy: Any = None,
        init_weights: dict[str, np.ndarray] | None = None,
    ):
        import keras
        import tensorflow as tf

        from malpi.policy.model import build_policy
        from malpi.train.distribute import is_chief

        if len(actions) != spec.num_actions:
            raise ValueError("the action table and the spec disagree on the number of actions")
        self.spec, self.actions, self.config = spec, actions, config
        self.workdir = Path(workdir)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.chief = is_chief(self.strategy)
        self.replicas = int(self.strategy.num_replicas_in_sync)
        if config.batch_size % self.replicas:
            raise ValueError(
                f"batch size {config.batch_size} does not divide among {self.replicas} replicas"
            )
        with self.strategy.scope():
            self.net = build_policy(spec, seed=config.seed)
            if init_weights is not None:
                self.net.set_named_weights(init_weights)
            self.model = self.net.sequence_model
            self.optimizer = keras.optimizers.Adam(config.learning_rate)
            self.optimizer.build(self.model.trainable_variables)
        self.progress = Progress()
        self._class_w = tf.constant(np.ones(spec.num_actions, np.float32))
        self._train_fn = None
        self._eval_fn = None
        self._lanes: tuple[np.ndarray, np.ndarray] | None = None  # carried TBPTT state (local)
        self._states: StateTable | None = None
        if self.chief:
            self.workdir.mkdir(parents=True, exist_ok=True)
        self._tb: dict[str, Any] = {}

    # -- public --------------------------------------------------------------------------

    def fit(self, train: list[Episode], val: list[Episode]) -> Progress:
        """Train (or resume training) on ``train``, validating on ``val`` after every epoch."""
        import tensorflow as tf

        cfg = self.config
        image = (self.spec.image_height, self.spec.image_width)
        table = FrameTable(train, image)
        val_table = FrameTable(val, image) if val else None
        cw = class_weights(train, self.spec.num_actions, cfg.class_weight_power)
        self._class_w = tf.constant(cw)
        log.info(
            "training on %d episodes (%d steps), validating on %d; class weights %s",
            len(train),
            len(table),
            len(val),
            [round(float(w), 2) for w in cw],
        )
        if cfg.sequence.mode == "burnin":
            self._states = StateTable(num_window_slots(table, cfg.sequence), self.spec.lstm_units)
        self._write_config()
        self.restore()
        if self.progress.stopped_early:
            log.info("training had already stopped early; nothing to do")
        started = time.monotonic()
        while self.progress.epoch < cfg.epochs and not self.progress.stopped_early:
            epoch = self.progress.epoch
            t0 = time.monotonic()
            train_metrics = self._run_epoch(table, epoch)
            val_metrics = self.validate(val_table) if val_table is not None else {}
            self._end_epoch(epoch, train_metrics, val_metrics, time.monotonic() - t0)
        if val_table is not None and (self.workdir / "best.npz").exists():
            self.net.set_named_weights(load_weights(self.workdir / "best.npz"))
        for w in self._tb.values():
            w.flush()
        if self.chief:
            from malpi.train.pictures import write_training_pictures

            write_training_pictures(self.workdir)
        log.info("training finished in %.0f s", time.monotonic() - started)
        return self.progress

    def weights(self) -> dict[str, np.ndarray]:
        return self.net.named_weights()

    # -- one epoch -------------------------------------------------------------------------

    def _run_epoch(self, table: FrameTable, epoch: int) -> dict[str, float]:
        from tqdm import tqdm

        cfg = self.config
        plan = make_plan(
            table, cfg.sequence, cfg.batch_size, np.random.default_rng([cfg.seed, epoch])
        )
        steps = min(plan.steps, cfg.steps_per_epoch) if cfg.steps_per_epoch else plan.steps
        start = self.progress.step
        if start >= steps:
            return {}

        def dataset_fn(ctx):
            return make_dataset(
                table,
                plan,
                self.spec.num_actions,
                ctx.get_per_replica_batch_size(cfg.batch_size),
                epoch=epoch,
                skip_batches=start,
                pipeline=ctx.input_pipeline_id,
                pipelines=ctx.num_input_pipelines,
                augmentation=cfg.augmentation,
                states=self._states,
                seed=cfg.seed,
            )

        dist = self.strategy.distribute_datasets_from_function(dataset_fn)
        iterator = iter(dist)
        if start == 0 or self._lanes is None:
            self._lanes = self._zero_lanes()
        h, c = self._distribute_lanes(self._lanes)
        fn = self._train_function()
        totals = np.zeros(4)
        bar = tqdm(
            total=steps,
            initial=start,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            disable=not (cfg.progress and self.chief),
            leave=False,
        )
        window = np.zeros(4)
        for step in range(start, steps):
            self.optimizer.learning_rate = self._lr(epoch + step / steps)
            sums, h, c, mid = fn(next(iterator), h, c)
            sums = np.array([float(s) for s in sums])
            if self._states is not None:  # refresh the stored states (R2D2's stale-state fix)
                local = [self.strategy.experimental_local_results(x) for x in mid]
                slots, mh, mc = (np.concatenate([np.asarray(t) for t in xs]) for xs in local)
                self._states.write(slots, mh, mc)
            totals += sums
            window += sums
            self.progress.step = step + 1
            self.progress.global_step += 1
            bar.update(1)
            if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
                loss, acc = window[0] / max(window[3], 1e-9), window[2] / max(window[3], 1e-9)
                bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}")
                self.progress.curve.append([self.progress.global_step, loss, acc])
                self._log(
                    "train",
                    {"loss": loss, "accuracy": acc, "lr": self._lr(epoch + (step + 1) / steps)},
                )
                window[:] = 0
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps:
                self._lanes = self._local_lanes(h, c)
                self.save_checkpoint()
        bar.close()
        w = max(totals[3], 1e-9)
        return {
            "loss": totals[0] / w,
            "nll": totals[1] / w,
            "accuracy": totals[2] / w,
            "steps": steps,
        }

    def _end_epoch(
        self, epoch: int, train: dict[str, float], val: dict[str, Any], seconds: float
    ) -> None:
        p, cfg = self.progress, self.config
        row = {"epoch": epoch + 1, "seconds": round(seconds, 1), "lr": self._lr(epoch + 1)}
        row.update({f"train_{k}": v for k, v in train.items()})
        row.update({f"val_{k}": v for k, v in val.items() if k != "confusion"})
        p.history.append(row)
        self._log(
            "val", {"nll": val.get("nll"), "accuracy": val.get("accuracy")}, step=p.global_step
        )
        if val:
            if val["nll"] < p.best_val_nll - 1e-4:
                p.best_val_nll, p.best_epoch, p.bad_epochs = val["nll"], epoch + 1, 0
                if self.chief:
                    save_weights(self.workdir / "best.npz", self.net.named_weights())
                    _write_json(self.workdir / "confusion.json", val["confusion"])
            else:
                p.bad_epochs += 1
                if cfg.patience and p.bad_epochs >= cfg.patience:
                    p.stopped_early = True
                    log.info(
                        "early stop: no better validation log-likelihood for %d epochs",
                        p.bad_epochs,
                    )
        log.info(
            "epoch %d/%d: train loss %.4f acc %.3f | val nll %s acc %s | %.0f s",
            epoch + 1,
            cfg.epochs,
            train.get("loss", float("nan")),
            train.get("accuracy", float("nan")),
            f"{val['nll']:.4f}" if val else "-",
            f"{val['accuracy']:.3f}" if val else "-",
            seconds,
        )
        p.epoch, p.step = epoch + 1, 0
        self._lanes = None
        self.save_checkpoint()

    # -- the step functions -------------------------------------------------------------------

    def _train_function(self):
        import tensorflow as tf

        if self._train_fn is not None:
            return self._train_fn
        model, opt, cfg = self.model, self.optimizer, self.config
        mode, stride, length = cfg.sequence.mode, cfg.sequence.stride, cfg.sequence.length
        units = self.spec.lstm_units

        def run(batch, h, c, lo, hi):
            return model(
                {
                    "frames": batch["frames"][:, lo:hi],
                    "prev_actions": batch["prev_actions"][:, lo:hi],
                    "episode_starts": batch["episode_starts"][:, lo:hi],
                    "h0": h,
                    "c0": c,
                },
                training=True,
            )

        def replica_step(batch, h, c):
            b = tf.shape(batch["targets"])[0]
            if mode == "zero":
                h = c = tf.zeros((b, units))
            elif mode == "burnin":
                h, c = batch["h0"], batch["c0"]
            weights = batch["weights"]
            targets = batch["targets"]
            ctx = tf.distribute.get_replica_context()
            total_w = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(weights))
            total_w = tf.stop_gradient(tf.maximum(total_w, 1e-6))
            with tf.GradientTape() as tape:
                if mode == "burnin" and stride < length:
                    first = run(batch, h, c, 0, stride)
                    second = run(batch, first["h"], first["c"], stride, length)
                    logits = tf.concat([first["logits"], second["logits"]], axis=1)
                    mid_h, mid_c = first["h"], first["c"]
                    out_h, out_c = second["h"], second["c"]
                else:
                    out = run(batch, h, c, 0, length)
                    logits, out_h, out_c = out["logits"], out["h"], out["c"]
                    mid_h, mid_c = out_h, out_c
                nll = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
                cw = tf.gather(self._class_w, targets)
                loss_sum = tf.reduce_sum(nll * weights * cw)
                loss = loss_sum / total_w
            # The value head gets no gradient from imitation (it is for reinforcement learning).
            pairs = [
                (g, v)
                for g, v in zip(
                    tape.gradient(loss, model.trainable_variables),
                    model.trainable_variables,
                    strict=True,
                )
                if g is not None
            ]
            grads, _ = tf.clip_by_global_norm([g for g, _ in pairs], cfg.clipnorm)
            opt.apply_gradients(zip(grads, [v for _, v in pairs], strict=True))
            correct = tf.cast(
                tf.equal(tf.argmax(logits, -1, output_type=tf.int32), targets), tf.float32
            )
            sums = (
                loss_sum,
                tf.reduce_sum(nll * weights),
                tf.reduce_sum(correct * weights),
                tf.reduce_sum(weights),
            )
            mid = (batch["next_slot"], tf.stop_gradient(mid_h), tf.stop_gradient(mid_c))
            return sums, tf.stop_gradient(out_h), tf.stop_gradient(out_c), mid

        strategy = self.strategy

        @tf.function
        def train_step(batch, h, c):
            sums, h, c, mid = strategy.run(replica_step, args=(batch, h, c))
            total = tuple(strategy.reduce(tf.distribute.ReduceOp.SUM, s, axis=None) for s in sums)
            return total, h, c, mid

        self._train_fn = train_step
        return self._train_fn

    def _eval_function(self):
        import tensorflow as tf

        if self._eval_fn is None:
            model = self.model

            @tf.function
            def evaluate(batch, h, c):
                out = model(
                    {
                        "frames": batch["frames"],
                        "prev_actions": batch["prev_actions"],
                        "episode_starts": batch["episode_starts"],
                        "h0": h,
                        "c0": c,
                    },
                    training=False,
                )
                return tf.nn.log_softmax(out["logits"]), out["h"], out["c"]

            self._eval_fn = evaluate
        return self._eval_fn

    def validate(self, table: FrameTable | None) -> dict[str, Any]:
        """Per-step log-likelihood, next-action accuracy and confusion on whole episodes,
        run from their start with the LSTM state carried (as on the robot), no augmentation."""
        if table is None:
            return {}
        lanes = min(8, len(table.episodes))
        plan = lane_plan(table, self.config.val_length, lanes, rng=None)
        return sequence_metrics(self._eval_function(), table, plan, self.spec)

    # -- state, checkpoints -------------------------------------------------------------------

    def _zero_lanes(self) -> tuple[np.ndarray, np.ndarray]:
        n = self.config.batch_size // self._pipelines()
        z = np.zeros((n, self.spec.lstm_units), np.float32)
        return z, z.copy()

    def _pipelines(self) -> int:
        """Input pipelines (one per worker); the strategy's input contexts say the same."""
        # Not public API: MultiWorkerMirroredStrategy's extended object knows its worker count;
        # every other strategy runs one worker.
        return int(getattr(self.strategy.extended, "_num_workers", 1) or 1)

    def _distribute_lanes(self, lanes: tuple[np.ndarray, np.ndarray]):
        """This worker's lanes' states as per-replica values (replica r: its slice of lanes)."""
        per = self.config.batch_size // self.replicas
        local = self.replicas // self._pipelines()

        def part(arr):
            def fn(ctx):
                r = ctx.replica_id_in_sync_group % local
                return arr[r * per : (r + 1) * per]

            return self.strategy.experimental_distribute_values_from_function(fn)

        return part(lanes[0]), part(lanes[1])

    def _local_lanes(self, h, c) -> tuple[np.ndarray, np.ndarray]:
        def cat(x):
            return np.concatenate(
                [np.asarray(t) for t in self.strategy.experimental_local_results(x)]
            )

        return cat(h), cat(c)

    def _lr(self, epochs_done: float) -> float:
        cfg = self.config
        frac = min(max(epochs_done / max(cfg.epochs, 1), 0.0), 1.0)
        lo = cfg.final_lr_fraction
        return float(cfg.learning_rate * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * frac))))

    def save_checkpoint(self) -> Path | None:
        """Write everything needed to resume; returns the file (None on non-chief workers)."""
        if not self.chief:
            return None
        p = self.progress
        arrays: dict[str, np.ndarray] = {f"w/{k}": v for k, v in self.net.named_weights().items()}
        for i, v in enumerate(self.optimizer.variables):
            arrays[f"opt/{i:04d}"] = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
        if self._lanes is not None and p.step > 0:
            arrays["lanes/h"], arrays["lanes/c"] = self._lanes
        if self._states is not None:
            arrays["states/h"], arrays["states/c"] = self._states.h, self._states.c
        arrays["progress"] = np.frombuffer(json.dumps(asdict(p)).encode(), np.uint8)
        ckdir = self.workdir / "checkpoints"
        path = ckdir / f"ckpt-{p.global_step:07d}.npz"
        save_npz(path, arrays)
        (ckdir / "latest.tmp").write_text(path.name)
        os.replace(ckdir / "latest.tmp", ckdir / "latest")
        for old in sorted(ckdir.glob("ckpt-*.npz"))[:-2]:
            old.unlink(missing_ok=True)
        _write_json(self.workdir / "history.json", {"history": p.history, "curve": p.curve})
        log.debug("checkpoint %s", path)
        return path

    def restore(self) -> bool:
        """Resume from the latest checkpoint in ``workdir``, if there is one."""
        latest = self.workdir / "checkpoints" / "latest"
        if not latest.exists():
            return False
        path = latest.parent / latest.read_text().strip()
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        self.net.set_named_weights({k[2:]: v for k, v in arrays.items() if k.startswith("w/")})
        opt_vars = self.optimizer.variables
        saved = sorted(k for k in arrays if k.startswith("opt/"))
        if len(saved) != len(opt_vars):
            raise RuntimeError(
                f"{path} holds {len(saved)} optimizer variables, expected {len(opt_vars)}"
            )
        for var, key in zip(opt_vars, saved, strict=True):
            var.assign(arrays[key])
        data = json.loads(arrays["progress"].tobytes().decode())
        self.progress = Progress(**data)
        if "lanes/h" in arrays:
            self._lanes = (arrays["lanes/h"], arrays["lanes/c"])
        states = self._states
        if states is not None and arrays.get("states/h", np.zeros(0)).shape == states.h.shape:
            states.h[:], states.c[:] = arrays["states/h"], arrays["states/c"]
        log.info(
            "resumed from %s: epoch %d, batch %d (global step %d)",
            path.name,
            self.progress.epoch + 1,
            self.progress.step,
            self.progress.global_step,
        )
        return True

    def _write_config(self) -> None:
        if self.chief:
            _write_json(
                self.workdir / "config.json",
                {
                    "train": self.config.to_dict(),
                    "spec": self.spec.to_dict(),
                    "actions": self.actions.to_list(),
                },
            )

    def _log(self, kind: str, values: dict[str, Any], step: int | None = None) -> None:
        if not self.chief:
            return
        from malpi.train.tblog import ScalarLog

        if kind not in self._tb:
            self._tb[kind] = ScalarLog(self.workdir / "logs" / kind)
        self._tb[kind].scalars(self.progress.global_step if step is None else step, values)


# -- metrics on whole episodes -----------------------------------------------------------------


def sequence_metrics(eval_fn, table: FrameTable, plan, spec: PolicySpec) -> dict[str, Any]:
    """Run ``eval_fn`` (batch, h, c) -> (log-probs, h, c) over a lane plan of ``table``
    carrying the state, and score every weighted step."""
    n = spec.num_actions
    ds = make_dataset(table, plan, n, plan.batch)
    h = np.zeros((plan.batch, spec.lstm_units), np.float32)
    c = h.copy()
    confusion = np.zeros((n, n))
    nll = correct = total = 0.0
    for batch in ds:
        logp, h, c = eval_fn(batch, h, c)
        logp = np.asarray(logp)
        t = batch["targets"].numpy()
        w = batch["weights"].numpy()
        pred = logp.argmax(-1)
        picked = np.take_along_axis(logp, t[..., None], -1)[..., 0]
        nll -= float((picked * w).sum())
        correct += float(((pred == t) * w).sum())
        total += float(w.sum())
        np.add.at(confusion, (t.ravel(), pred.ravel()), w.ravel())
    total = max(total, 1e-9)
    return {
        "nll": nll / total,
        "accuracy": correct / total,
        "steps": int(round(total)),
        "confusion": confusion.tolist(),
    }


# -- files ---------------------------------------------------------------------------------------


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(path, buf.getvalue())


def save_weights(path: Path, weights: dict[str, np.ndarray]) -> None:
    save_npz(path, weights)


def load_weights(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Named weights from a ``.npz`` (best.npz, a checkpoint) or a policy bundle."""
    path = Path(path)
    if path.suffix == ".malpi":
        return PolicyBundle.load(path, check_models=False).weights
    with np.load(path) as z:
        if any(k.startswith("w/") for k in z.files):
            return {k[2:]: z[k] for k in z.files if k.startswith("w/")}
        return {k: z[k] for k in z.files}


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=1).encode())


def export_bundle(
    weights: dict[str, np.ndarray],
    spec: PolicySpec,
    actions: ActionTable,
    out: str | os.PathLike[str],
    provenance: dict[str, Any] | None = None,
    version: int = 1,
    parent: str | None = None,
    control_hz: float | None = None,
    integer_car: str | None = None,
    recordings: Sequence[str] = (),
) -> PolicyBundle:
    """A bundle of these weights (LiteRT float and dynamic-range, parity-checked), saved to
    ``out``; ``control_hz``: the rate the training data ran at. ``integer_car``: also an
    integer model, calibrated on that simulated car's frames and on ``recordings``."""
    from malpi.policy.export import make_bundle
    from malpi.policy.model import build_policy

    net = build_policy(spec)  # a fresh, undistributed copy: the converter wants plain variables
    net.set_named_weights(weights)
    bundle = make_bundle(
        net, actions, provenance or {}, version=version, parent=parent, control_hz=control_hz
    )
    if integer_car:
        from malpi.train.quantize import quantize

        bundle, _ = quantize(bundle, integer_car, recordings)
    bundle.save(out)
    log.info("bundle %s -> %s (%d bytes)", bundle.label, out, Path(out).stat().st_size)
    return bundle
