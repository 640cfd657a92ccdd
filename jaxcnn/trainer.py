"""Training and evaluation of a jaxcnn experiment.

Reads top to bottom: state, loss, the pmap train step, the pmap eval step,
set-up, the loop. `train_and_evaluate(config, workdir)` is what
`python -m jaxcnn.train` calls.

How a step finds its data: the whole uint8 training set sits on every device.
The host computes each epoch's permutation once (a pure function of seed and
epoch) and sends it to the devices; the step picks its examples from it by its
own step counter and device index, then augments and normalizes them. Nothing
crosses from the host per step, and every random choice is a pure function of
(seed, step), so a resumed run repeats an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import signal
import sys
import threading
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn import augment, checkpoint, optim, parallel, reporting
from jaxcnn.config import Config, ConfigError, diff
from jaxcnn.data import Dataset, channel_stats, load_from_config
from jaxcnn.models import create_model
from jaxcnn.workdir_lock import WorkdirLock

AXIS = parallel.AXIS
NO_BAD_STEP = np.iinfo(np.int32).max


class TrainingError(RuntimeError):
  """Training cannot go on (non-finite loss, incompatible workdir)."""


class Interrupted(RuntimeError):
  """SIGINT/SIGTERM: a checkpoint was written and training stopped."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


# --- State ------------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32: number of updates applied.
  params: Any
  batch_stats: Any  # BatchNorm running statistics ({} without BatchNorm).
  # BatchNorm statistics to use with the EMA parameters: their own EMA, with
  # the same decay as the parameters. Running statistics collected under the
  # raw weights would not match the averaged weights' activations.
  ema_batch_stats: Any
  opt_state: Any  # The optax chain state; its last element holds the EMA.
  rng: jax.Array  # Root key for dropout; folded with step and device.
  # Lookahead's slow copy {'params', 'batch_stats'} (optim.lookahead); {}
  # when optim.lookahead_every_steps is 0.
  lookahead: Any = dataclasses.field(default_factory=dict)

  def to_dict(self) -> dict:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  @classmethod
  def from_dict(cls, d: dict) -> "TrainState":
    return cls(**d)


# --- Loss and metrics ---------------------------------------------------------


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels)


def smoothed_cross_entropy(logits, labels, smoothing: float):
  """Cross-entropy against (1 - smoothing) * one_hot + smoothing / classes
  (label smoothing); the plain integer-label form when smoothing is 0."""
  if smoothing == 0:
    return cross_entropy(logits, labels)
  targets = optax.smooth_labels(
      jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32), smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


# --- Set-up -------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
  """Everything derived from a config and a dataset."""
  config: Config  # Resolved: channel statistics filled in.
  data: Dataset
  model: Any
  tx: optax.GradientTransformation
  schedule: Callable
  devices: list  # All devices the pmap spans (of every process).
  steps_per_epoch: int
  total_steps: int

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  @property
  def local_devices(self) -> list:
    """This process's share of `devices`: where its inputs are placed."""
    return parallel.local_part(self.devices)

  @property
  def mean_std(self):
    return (np.asarray(self.config.data.channel_mean, np.float32),
            np.asarray(self.config.data.channel_std, np.float32))


def _check_sizes(config: Config) -> None:
  positive = ["train.batch_size", "train.eval_batch_size",
              "train.log_every_steps", "train.checkpoint_every_steps",
              "train.keep_checkpoints", "train.steps_per_dispatch"]
  non_negative = ["train.num_epochs", "train.num_steps",
                  "train.eval_every_epochs", "data.train_limit",
                  "data.test_limit", "data.crop_padding"]
  flat = dict(config.flat_items())
  for key in positive:
    if flat[key] <= 0:
      raise ConfigError(f"{key} must be positive, got {flat[key]}")
  for key in non_negative:
    if flat[key] < 0:
      raise ConfigError(f"{key} must be >= 0, got {flat[key]}")
  if config.train.num_epochs == 0 and config.train.num_steps == 0:
    raise ConfigError("set train.num_epochs or train.num_steps above 0")
  if config.data.normalization not in augment.NORMALIZATIONS:
    raise ConfigError(
        f"data.normalization={config.data.normalization!r}; use one of "
        f"{', '.join(augment.NORMALIZATIONS)}")
  for key, choices in (("data.crop_pad_mode", tuple(augment.PAD_MODES)),
                       ("data.flip_mode", augment.FLIP_MODES),
                       ("train.final_tta", augment.TTA_MODES)):
    if flat[key] not in choices:
      raise ConfigError(f"{key}={flat[key]!r}; use one of {', '.join(choices)}")
  if not 0 <= config.train.label_smoothing < 1:
    raise ConfigError(f"train.label_smoothing must be in [0, 1), got "
                      f"{config.train.label_smoothing}")
  if config.optim.lookahead_every_steps < 0:
    raise ConfigError(f"optim.lookahead_every_steps must be >= 0, got "
                      f"{config.optim.lookahead_every_steps}")
  if config.optim.lookahead_every_steps and not (
      0 <= config.optim.lookahead_decay <= 1
      and config.optim.lookahead_start_epochs >= 0):
    raise ConfigError(
        "optim.lookahead_decay must be in [0, 1] and "
        "optim.lookahead_start_epochs >= 0, got "
        f"{config.optim.lookahead_decay} and "
        f"{config.optim.lookahead_start_epochs}")


def build(config: Config, data: Dataset | None = None) -> Setup:
  """Validates the config, loads data, builds model and optimizer.

  Touches no files: every bad-input error surfaces here, before a workdir is
  written.
  """
  _check_sizes(config)
  devices = parallel.select_devices(config.train.num_devices)
  parallel.per_device(config.train.batch_size, len(devices), "train.batch_size")
  if data is None:
    data = load_from_config(config.data, config.seed)
  config = config.copy()
  if data.num_classes != config.model.num_classes:
    raise ConfigError(
        f"the data has {data.num_classes} classes but model.num_classes="
        f"{config.model.num_classes}")
  n_train = len(data.train_labels)
  if n_train < config.train.batch_size:
    raise ConfigError(
        f"train.batch_size={config.train.batch_size} is larger than the "
        f"training set ({n_train} images)")
  if not config.data.channel_mean:
    mean, std = channel_stats(data.train_images)
    config.data.channel_mean = tuple(round(float(v), 6) for v in mean)
    config.data.channel_std = tuple(round(float(v), 6) for v in std)
  steps_per_epoch = n_train // config.train.batch_size  # Drop the remainder.
  total_steps = config.train.num_steps or config.train.num_epochs * steps_per_epoch
  if config.train.steps_per_dispatch > steps_per_epoch:
    raise ConfigError(
        f"train.steps_per_dispatch={config.train.steps_per_dispatch} exceeds "
        f"the {steps_per_epoch} steps of an epoch")
  model = create_model(config.model, bn_axis_name=AXIS)
  batch = config.train.batch_size
  schedule = optim.make_schedule(config.optim, steps_per_epoch,
                                 total_steps=total_steps, batch_size=batch)
  tx = optim.make_optimizer(config.optim, steps_per_epoch,
                            total_steps=total_steps, batch_size=batch)
  return Setup(config=config, data=data, model=model, tx=tx, schedule=schedule,
               devices=devices, steps_per_epoch=steps_per_epoch,
               total_steps=total_steps)


def create_train_state(setup: Setup) -> TrainState:
  """A fresh, unreplicated state on the default device."""
  root = jax.random.PRNGKey(setup.config.seed)
  init_key, dropout_key = jax.random.split(root)
  sample = jnp.zeros((1,) + setup.data.image_shape, jnp.float32)
  variables = setup.model.init({"params": init_key, "dropout": init_key},
                               sample, train=False)
  params = variables["params"]
  if hasattr(setup.model, "init_from_data"):
    # Data-dependent init (speednet's whitening layer), from a seeded random
    # sample of the normalized training images (a folder's images come
    # sorted by class: its first ones are one class).
    cfg = setup.config
    images = setup.data.train_images
    count = min(len(images), int(cfg.model.whiten_images))
    pick = np.sort(np.random.default_rng([cfg.seed, 1]).choice(
        len(images), count, replace=False))
    mean, std = setup.mean_std
    # Concrete values even when this runs under a trace (jax.eval_shape in
    # evaluation, jit in the benchmark): the init computes with numpy.
    with jax.ensure_compile_time_eval():
      sample = np.asarray(augment.normalize(jnp.asarray(images[pick]),
                                            cfg.data.normalization, mean, std))
    params = setup.model.init_from_data(params, sample)
  batch_stats = variables.get("batch_stats", {})
  slow = {}
  if setup.config.optim.lookahead_every_steps:
    slow = jax.tree.map(jnp.copy, {"params": params,
                                   "batch_stats": batch_stats})
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      ema_batch_stats=jax.tree.map(jnp.copy, batch_stats),
      opt_state=setup.tx.init(params),
      rng=dropout_key,
      lookahead=slow)


def variables_of(state: TrainState, weights: str) -> dict:
  """The model variables of one weight set of `state`: 'raw' (the trained
  parameters and their BatchNorm running statistics) or 'ema' (the EMA of
  the parameters, `optim.ema_params`, and that of the statistics)."""
  if weights == "raw":
    return {"params": state.params, "batch_stats": state.batch_stats}
  if weights == "ema":
    return {"params": optim.ema_params(state.opt_state),
            "batch_stats": state.ema_batch_stats}
  raise ValueError(f"weights must be 'raw' or 'ema', got {weights!r}")


# --- Train step ---------------------------------------------------------------


def _new_accumulator() -> dict:
  zero = np.zeros((), np.float32)
  return {"loss_sum": zero, "correct": zero, "count": zero,
          "grad_norm_sum": zero, "steps": zero,
          "bad_step": np.array(NO_BAD_STEP, np.int32)}


def make_train_fn(setup: Setup, num_steps: int):
  """A pmap'd function running `num_steps` train steps per call:
  (state, acc, train_x, train_y, perm2) -> (state, acc).

  perm2 holds the permutations of the epoch of the first step and of the next
  one (a call may cross one epoch boundary).
  """
  cfg = setup.config
  model = setup.model
  tx = setup.tx
  global_batch = cfg.train.batch_size
  local_batch = global_batch // setup.num_devices
  steps_per_epoch = setup.steps_per_epoch
  mean, std = setup.mean_std
  decay, ramp = cfg.optim.ema_decay, cfg.optim.ema_ramp
  smoothing = float(cfg.train.label_smoothing)
  # Each image's own flip coin under flip_mode 'alternate' (a key no step
  # key can equal: those are fold_ins of the seed key, this is a split).
  flip_coins_key = jax.random.split(jax.random.PRNGKey(cfg.seed))[1]
  la_every = int(cfg.optim.lookahead_every_steps)

  def one_step(state: TrainState, acc: dict, train_x, train_y, perm2, base):
    device = jax.lax.axis_index(AXIS)
    offset = device * local_batch
    pos = (state.step - base) * global_batch + offset
    idx = jax.lax.dynamic_slice_in_dim(perm2, pos, local_batch)
    images = jnp.take(train_x, idx, axis=0)
    labels = jnp.take(train_y, idx, axis=0)

    step_key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), state.step)
    aug_key = jax.random.fold_in(step_key, 0)
    dropout_key = jax.random.fold_in(
        jax.random.fold_in(state.rng, state.step), device)
    images = augment.random_crop_flip(
        images, aug_key, global_batch=global_batch, offset=offset,
        crop=cfg.data.random_crop, padding=cfg.data.crop_padding,
        flip=cfg.data.random_flip, pad_mode=cfg.data.crop_pad_mode,
        flip_mode=cfg.data.flip_mode, epoch=state.step // steps_per_epoch,
        example_ids=idx,
        seed_key=flip_coins_key)
    x = augment.normalize(images, cfg.data.normalization, mean, std)

    def loss_fn(params):
      logits, new_vars = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, x, train=True,
          rngs={"dropout": dropout_key}, mutable=["batch_stats"])
      loss = jnp.mean(smoothed_cross_entropy(logits, labels, smoothing))
      return loss, (logits, new_vars.get("batch_stats", {}))

    (loss, (logits, new_batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    # Every device has the same shard size, so the mean of the device means is
    # the mean over the global batch.
    grads = jax.lax.pmean(grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # The statistics' EMA, by the rule and decay of the parameters' EMA (the
    # last link of `tx`).
    ema_batch_stats = optim.ema_update(
        state.ema_batch_stats, new_batch_stats,
        optim.ema_decay_at(state.step + 1, decay, ramp))

    grad_norm = optax.global_norm(grads)
    correct = jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    sums = jax.lax.psum(
        {"loss_sum": loss * local_batch, "correct": correct,
         "count": jnp.float32(local_batch)}, AXIS)
    finite = jnp.isfinite(sums["loss_sum"]) & jnp.isfinite(grad_norm)
    acc = {
        "loss_sum": acc["loss_sum"] + sums["loss_sum"],
        "correct": acc["correct"] + sums["correct"],
        "count": acc["count"] + sums["count"],
        "grad_norm_sum": acc["grad_norm_sum"] + grad_norm,
        "steps": acc["steps"] + 1,
        "bad_step": jnp.where(finite, acc["bad_step"],
                              jnp.minimum(acc["bad_step"], state.step + 1)),
    }
    slow = state.lookahead
    if la_every:
      live, slow = optim.lookahead(
          state.step + 1, {"params": params, "batch_stats": new_batch_stats},
          slow, every=la_every, decay=cfg.optim.lookahead_decay,
          start_step=int(round(cfg.optim.lookahead_start_epochs
                               * steps_per_epoch)),
          steps_per_epoch=steps_per_epoch, total_steps=setup.total_steps)
      params, new_batch_stats = live["params"], live["batch_stats"]
    state = state.replace(step=state.step + 1, params=params,
                          batch_stats=new_batch_stats,
                          ema_batch_stats=ema_batch_stats, opt_state=opt_state,
                          lookahead=slow)
    return state, acc

  def run(state, acc, train_x, train_y, perm2):
    base = (state.step // steps_per_epoch) * steps_per_epoch

    def body(carry, _):
      s, a = carry
      return one_step(s, a, train_x, train_y, perm2, base), None

    if num_steps == 1:
      return one_step(state, acc, train_x, train_y, perm2, base)
    (state, acc), _ = jax.lax.scan(body, (state, acc), None, length=num_steps)
    return state, acc

  return jax.pmap(run, axis_name=AXIS, devices=setup.devices,
                  donate_argnums=(0, 1))


def epoch_permutation(seed: int, epoch: int, n: int, steps_per_epoch: int,
                      batch_size: int) -> np.ndarray:
  """The example order of one epoch: a pure function of (seed, epoch)."""
  rng = np.random.default_rng([seed, epoch])
  return rng.permutation(n)[:steps_per_epoch * batch_size].astype(np.int32)


# --- Eval step ----------------------------------------------------------------


@dataclasses.dataclass
class EvalData:
  images: Any  # [devices, batches, batch, H, W, C] uint8, sharded.
  labels: Any  # [devices, batches, batch] int32
  mask: Any  # [devices, batches, batch] float32: 0 for padding.
  count: int  # Real examples.


def place_eval_data(images: np.ndarray, labels: np.ndarray, devices: list,
                    batch_size: int) -> EvalData:
  """Pads the split to whole batches over the devices; each image counts once.

  `devices` are all the devices of the pmap; this process places the rows of
  its own devices (all of them with one process)."""
  n = len(labels)
  if n == 0:
    raise ConfigError("the evaluation split is empty")
  per_device = max(1, math.ceil(min(batch_size, n) / len(devices)))
  batches = math.ceil(n / (per_device * len(devices)))
  total = batches * per_device * len(devices)
  pad = total - n
  images = np.concatenate(
      [images, np.zeros((pad,) + images.shape[1:], images.dtype)])
  labels = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
  mask = np.concatenate([np.ones((n,), np.float32), np.zeros((pad,), np.float32)])
  shape = (len(devices), batches, per_device)
  rows = parallel.local_rows(devices)
  local = parallel.local_part(devices)
  return EvalData(
      images=parallel.shard(
          images.reshape(shape + images.shape[1:])[rows], local),
      labels=parallel.shard(labels.reshape(shape)[rows], local),
      mask=parallel.shard(mask.reshape(shape)[rows], local), count=n)


def make_eval_fn(model, config: Config, devices: list, tta: str = "none"):
  """pmap'd (variables, images, labels, mask) -> summed loss, top-1, top-5
  correct, count and confusion matrix [true, predicted] over the split.
  `tta`: test-time augmentation, one of augment.TTA_MODES."""
  if tta not in augment.TTA_MODES:
    raise ConfigError(f"unknown test-time augmentation {tta!r}; use one of "
                      f"{', '.join(augment.TTA_MODES)}")
  num_classes = config.model.num_classes
  mean = np.asarray(config.data.channel_mean, np.float32)
  std = np.asarray(config.data.channel_std, np.float32)
  normalization = config.data.normalization

  def run(variables, images, labels, mask):
    def body(totals, batch):
      x_u8, y, m = batch
      x = augment.normalize(x_u8, normalization, mean, std)
      logits = augment.tta_logits(
          lambda x: model.apply(variables, x, train=False).astype(jnp.float32),
          x, tta)
      pred = jnp.argmax(logits, -1)
      k = min(5, num_classes)
      top_k = jax.lax.top_k(logits, k)[1]
      in_top_k = jnp.any(top_k == y[:, None], axis=-1)
      totals = {
          "loss_sum": totals["loss_sum"] + jnp.sum(cross_entropy(logits, y) * m),
          "correct": totals["correct"] + jnp.sum((pred == y) * m),
          "correct_top5": totals["correct_top5"] + jnp.sum(in_top_k * m),
          "count": totals["count"] + jnp.sum(m),
          "confusion": totals["confusion"].at[y, pred].add(m),
      }
      return totals, None

    zero = jnp.zeros((), jnp.float32)
    init = {"loss_sum": zero, "correct": zero, "correct_top5": zero,
            "count": zero,
            "confusion": jnp.zeros((num_classes, num_classes), jnp.float32)}
    totals, _ = jax.lax.scan(body, init, (images, labels, mask))
    return jax.lax.psum(totals, AXIS)

  return jax.pmap(run, axis_name=AXIS, devices=devices)


def summarize_eval(totals: dict) -> dict:
  """Host-side numbers from the summed eval outputs of one device."""
  totals = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)[0]), totals)
  count = float(totals["count"])
  return {
      "loss": float(totals["loss_sum"]) / count,
      "accuracy": float(totals["correct"]) / count,
      "top5_accuracy": float(totals["correct_top5"]) / count,
      "count": int(round(count)),
      "confusion": totals["confusion"].round().astype(np.int64),
  }


# --- The loop -----------------------------------------------------------------

# Config fields that may change when a run resumes; any other difference
# between the checkpoint's config and the command's is refused.
RESUMABLE_CHANGES = (
    "train.num_epochs", "train.num_steps", "train.num_devices",
    "train.steps_per_dispatch", "train.log_every_steps",
    "train.eval_every_epochs", "train.eval_batch_size",
    "train.checkpoint_every_steps", "train.keep_checkpoints",
    "train.progress_bar", "train.collect_stats", "data.data_dir")


def incompatible_changes(saved: Config, current: Config) -> list[str]:
  return [line for line in diff(saved, current)
          if line.split(":", 1)[0] not in RESUMABLE_CHANGES]


class _StopFlag:
  """SIGINT/SIGTERM set a flag; the loop checkpoints and stops at the next
  step boundary. A second SIGINT stops at once."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _crossed(prev: int, now: int, every: int) -> bool:
  return every > 0 and now // every > prev // every


def evaluate_state(setup: Setup, eval_fn, state_r: TrainState,
                   eval_data: EvalData) -> dict:
  """{'raw': {...}, 'ema': {...}} for a replicated state."""
  out = {}
  for name in ("raw", "ema"):
    totals = eval_fn(variables_of(state_r, name), eval_data.images,
                     eval_data.labels, eval_data.mask)
    out[name] = summarize_eval(totals)
  return out


def train_and_evaluate(config: Config, workdir: str, *,
                       data: Dataset | None = None) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Returns the final evaluation: {'step', 'raw': {...}, 'ema': {...}}.
  """
  setup = build(config, data)
  config = setup.config
  is_main = jax.process_index() == 0
  say = (lambda text: print(text, file=sys.stderr, flush=True)) if is_main \
      else (lambda text: None)

  # Processes of one run share the workdir; the first one holds the lock.
  lock = WorkdirLock(workdir).acquire() if is_main else None
  try:
    return _train_locked(setup, workdir, say, is_main)
  finally:
    if lock is not None:
      lock.release()


def _resume_state(setup: Setup, workdir: str, fresh: TrainState,
                         say) -> TrainState | None:
  """The state to resume from, in checkpoint.restore_latest_good's resume
  order (None: start afresh); a saved config must agree with this one,
  RESUMABLE_CHANGES aside."""
  def target(saved_config: Config) -> dict:
    changes = incompatible_changes(saved_config, setup.config)
    if changes:
      raise TrainingError(
          f"{workdir} holds a run with a different config ("
          + "; ".join(changes) + "): use another --workdir to start afresh")
    return fresh.to_dict()

  restored = checkpoint.restore_latest_good(workdir, target,
                                            skip_unreadable=True, say=say)
  if restored is None:
    return None
  state = TrainState.from_dict(restored.state)
  say(f"resuming from checkpoint step {int(state.step)} in {workdir}")
  return state


def _train_locked(setup: Setup, workdir: str, say, is_main: bool) -> dict:
  config = setup.config
  fresh = create_train_state(setup)
  restored = _resume_state(setup, workdir, fresh, say)
  state = fresh if restored is None else restored
  del fresh, restored
  manager = checkpoint.make_manager(workdir,
                                    keep=config.train.keep_checkpoints)
  if is_main:
    pathlib.Path(workdir, "config.json").write_text(config.to_json())

  devices, local = setup.devices, setup.local_devices
  n_train = len(setup.data.train_labels)
  # Every device holds the whole uint8 training set and gathers only its own
  # slice of each global batch (see the module docstring).
  train_x = parallel.replicate(setup.data.train_images, local)
  train_y = parallel.replicate(setup.data.train_labels.astype(np.int32), local)
  eval_data = place_eval_data(setup.data.test_images, setup.data.test_labels,
                              devices, config.train.eval_batch_size)
  eval_fn = make_eval_fn(setup.model, config, devices)
  state_r = parallel.replicate(state, local)
  acc = parallel.replicate(_new_accumulator(), local)
  train_fns: dict[int, Any] = {}
  stats_fn = None
  if config.train.collect_stats:
    from jaxcnn import stats  # Only built when asked for: no cost otherwise.
    stats_fn = stats.StatsCollector(setup)

  perm_epoch, perm2 = None, None
  step = start_step = int(state.step)
  timing = None
  total = setup.total_steps
  spe = setup.steps_per_epoch
  batch = config.train.batch_size
  writer = reporting.MetricWriter(workdir, enabled=is_main)
  progress = reporting.Progress(total, step,
                                enabled=is_main and config.train.progress_bar)
  say(f"training {config.model.name} on {setup.data.source}: {n_train} train / "
      f"{len(setup.data.test_labels)} test images, {len(devices)} "
      f"{devices[0].platform} device(s), batch {batch}, {spe} steps/epoch, "
      f"steps {step}->{total}")
  last_log_step, last_log_time = step, time.time()
  # On XLA CPU, devices are threads of one pool: with many queued calls, the
  # all-reduce of one call waited for threads held by the next ones until
  # XLA's 40 s rendezvous timeout killed the process (seen with 4 fake devices
  # on 2 cores). There a call starts once the previous one is done; GPUs keep
  # the asynchronous queue.
  one_call_in_flight = devices[0].platform == "cpu" and len(devices) > 1
  result = None
  warmed = False
  # Training time: wall time from the end of the first call (which compiles)
  # to the last step, less evaluation, statistics and checkpoint writing.
  first_call = {"seconds": 0.0, "steps": 0}
  timer_start, excluded = None, 0.0

  def save(at_step: int) -> None:
    # Host (numpy) copies: every process passes the same values and orbax's
    # primary process writes them, whatever the device count.
    checkpoint.save(manager, at_step,
                    jax.device_get(parallel.unreplicate(state_r).to_dict()),
                    config)

  def check_finite(acc_host: dict) -> None:
    bad = int(acc_host["bad_step"])
    if bad != NO_BAD_STEP:
      saved = checkpoint.saved_steps(workdir)
      raise TrainingError(
          f"non-finite loss or gradient at step {bad} (lr "
          f"{float(setup.schedule(bad - 1)):.4g}); stopped without saving; "
          f"last good checkpoint: {saved[-1] if saved else 'none'}")

  try:
    with _StopFlag() as stop:
      while step < total:
        n = config.train.steps_per_dispatch
        if step + n > total:
          n = 1
        epoch = step // spe
        if perm_epoch != epoch:
          perm = np.concatenate([
              epoch_permutation(config.seed, e, n_train, spe, batch)
              for e in (epoch, epoch + 1)])
          perm2 = parallel.replicate(perm, local)
          perm_epoch = epoch
        if n not in train_fns:
          train_fns[n] = make_train_fn(setup, n)
        first = not warmed
        t0 = time.time()
        if one_call_in_flight:
          jax.block_until_ready(state_r.step)
        state_r, acc = train_fns[n](state_r, acc, train_x, train_y, perm2)
        prev, step = step, step + n
        if first:
          jax.block_until_ready(acc)
          first_call = {"seconds": time.time() - t0, "steps": n}
          say(f"compiled and ran the first step in {time.time() - t0:.1f}s")
          last_log_time = time.time()
          last_log_step = step
          timer_start = time.time()
          warmed = True

        at_end = step >= total
        do_log = _crossed(prev, step, config.train.log_every_steps) or at_end
        do_eval = at_end or _crossed(
            prev, step, config.train.eval_every_epochs * spe)
        do_ckpt = at_end or stop.signum is not None or _crossed(
            prev, step, config.train.checkpoint_every_steps)
        if not (do_log or do_eval or do_ckpt):
          continue
        acc_host = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)[0]),
                                acc)
        check_finite(acc_host)
        if do_log and acc_host["count"] > 0:
          now = time.time()
          steps_done = max(step - last_log_step, 1)
          metrics = {
              "loss": float(acc_host["loss_sum"] / acc_host["count"]),
              "accuracy": float(acc_host["correct"] / acc_host["count"]),
              "grad_norm": float(acc_host["grad_norm_sum"] / acc_host["steps"]),
              "learning_rate": float(setup.schedule(step - 1)),
              "examples_per_sec": steps_done * batch / max(now - last_log_time,
                                                           1e-9),
              "sec_per_batch": (now - last_log_time) / steps_done,
              "epoch": step / spe,
          }
          writer.write("train", step, **metrics)
          progress.update(step, loss=metrics["loss"], acc=metrics["accuracy"],
                          img_s=round(metrics["examples_per_sec"]))
          acc = parallel.replicate(_new_accumulator(), local)
          last_log_step, last_log_time = step, time.time()
        if do_log and stats_fn is not None:
          stats_start = time.time()
          writer.write("stats", step, **stats_fn(state_r))
          last_log_time += time.time() - stats_start  # Not training time.
          excluded += time.time() - stats_start
        if at_end and timer_start is not None:
          timing = _training_seconds(
              first_call, time.time() - timer_start - excluded,
              step - first_call["steps"] - start_step)
          writer.write("timing", step, **timing)
        if do_eval:
          eval_start = time.time()
          results = evaluate_state(setup, eval_fn, state_r, eval_data)
          writer.write(
              "eval", step, epoch=step / spe,
              **{f"test_{k}_{w}": results[w][k] for w in ("raw", "ema")
                 for k in ("accuracy", "loss", "top5_accuracy")})
          progress.write(
              f"step {step} (epoch {step / spe:.1f}): test accuracy raw "
              f"{results['raw']['accuracy']:.2%}, EMA "
              f"{results['ema']['accuracy']:.2%}")
          result = {"step": step, **results}
          if at_end and config.train.final_tta != "none":
            result["tta"] = _evaluate_tta(setup, state_r, eval_data, writer,
                                          step, say)
          last_log_time += time.time() - eval_start  # Not training time.
          excluded += time.time() - eval_start
        if do_ckpt:
          save_start = time.time()
          save(step)
          excluded += time.time() - save_start
        if stop.signum is not None and not at_end:
          checkpoint.wait(manager)
          name = signal.Signals(stop.signum).name
          raise Interrupted(
              f"{name}: stopped at step {step} after writing a checkpoint; run "
              "the same command to resume", stop.signum)
  finally:
    try:
      checkpoint.wait(manager)
    finally:
      manager.close()
    progress.close()
    writer.close()

  if result is None:  # Nothing left to train: evaluate now.
    result = {"step": step, **evaluate_state(setup, eval_fn, state_r, eval_data)}
  if timing is not None:
    result.update(timing)
    say(f"training time {timing['train_seconds']:.1f}s for "
        f"{step - start_step} steps (compile "
        f"{timing['compile_seconds']:.1f}s, evaluation and checkpoints "
        "excluded)" if timing["compile_seconds"] is not None else
        f"training time {timing['train_seconds']:.1f}s, compile included")
  say(f"final: step {result['step']}, test accuracy raw "
      f"{result['raw']['accuracy']:.2%}, EMA {result['ema']['accuracy']:.2%} "
      f"on {result['raw']['count']} images")
  return result


def _evaluate_tta(setup: Setup, state_r: TrainState, eval_data: EvalData,
                  writer, step: int, say) -> dict:
  """The final evaluation with train.final_tta, logged as kind 'eval_tta'."""
  tta = setup.config.train.final_tta
  tta_fn = make_eval_fn(setup.model, setup.config, setup.devices, tta=tta)
  results = evaluate_state(setup, tta_fn, state_r, eval_data)
  writer.write("eval_tta", step, tta=tta,
               **{f"test_{k}_{w}": results[w][k] for w in ("raw", "ema")
                  for k in ("accuracy", "loss", "top5_accuracy")})
  say(f"step {step}: test accuracy with TTA ({tta}) raw "
      f"{results['raw']['accuracy']:.2%}, EMA {results['ema']['accuracy']:.2%}")
  return {"mode": tta, **results}


def _training_seconds(first_call: dict, wall_after_first: float,
                      steps_after_first: int) -> dict:
  """Training and compile seconds: the steps after the first call took
  `wall_after_first`; the first call's steps are counted at their mean, and
  the rest of the first call is compilation. Without later steps the first
  call's time is all we have (compile unknown: None)."""
  if steps_after_first <= 0:
    return {"train_seconds": first_call["seconds"], "compile_seconds": None}
  per_step = wall_after_first / steps_after_first
  first_steps = first_call["steps"] * per_step
  return {"train_seconds": wall_after_first + first_steps,
          "compile_seconds": max(first_call["seconds"] - first_steps, 0.0)}
