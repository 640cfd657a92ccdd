"""The training state, and everything built from a config to make one: the
model, the optimizer chain, the schedule and the step counts.

`build(config, data)` checks a config against its data and fills in what the
data decides (channel statistics, training-set size, image shape), so the
saved config is complete: `build_from_config(config)` rebuilds the same
model, optimizer and schedule from it alone, which is how eval and inspect
restore a checkpoint without reading or faking any data.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn import augment, models, optim, parallel
from jaxcnn.config import Config, ConfigError
from jaxcnn.data import Dataset, channel_stats, load_from_config
from jaxcnn.models import create_model


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
  # Data pruning (data.prune_fraction): {'loss': each training image's loss
  # when it was last trained on (inf: never), 'scores': that table as it was
  # at the start of the current data epoch, which chose the epoch's images};
  # {} when off. Checkpointed, so a resumed run picks the same images.
  example_loss: Any = dataclasses.field(default_factory=dict)

  def to_dict(self) -> dict:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  @classmethod
  def from_dict(cls, d: dict) -> "TrainState":
    return cls(**d)


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


@dataclasses.dataclass(frozen=True)
class RunSteps:
  """A run's length in steps: the one place that derives it from a config
  (see run_steps)."""
  steps_per_epoch: int  # Whole batches of the training set: the rest dropped.
  total_steps: int  # train.num_steps, else train.num_epochs epochs.
  # Data pruning (data.prune_fraction): the first pruned epoch, None when
  # off; the images each pruned epoch keeps, and its whole batches of them.
  prune_from: int | None = None
  kept: int = 0
  pruned_steps: int = 0

  def epoch_of(self, step):
    """The epoch (from 0) that step `step` (from 0) belongs to, counted in
    whole-set epochs of steps_per_epoch (what schedules, evaluations and
    flips count); an int, or an array under a trace."""
    return step // self.steps_per_epoch

  # The data epochs: what the input pipeline walks through. They are the
  # epochs above unless data pruning is on; then those from prune_from on
  # are pruned_steps long.

  def pruned(self, epoch: int) -> bool:
    """Whether data epoch `epoch` trains on the pruned set."""
    return self.prune_from is not None and epoch >= self.prune_from

  def data_epoch_steps(self, epoch: int) -> int:
    return self.pruned_steps if self.pruned(epoch) else self.steps_per_epoch

  def data_epoch_start(self, epoch):
    """The first step of data epoch `epoch` (an int, or an array under a
    trace)."""
    spe = self.steps_per_epoch
    if self.prune_from is None:
      return epoch * spe
    full = self.prune_from * spe
    after = full + (epoch - self.prune_from) * self.pruned_steps
    if isinstance(epoch, (int, np.integer)):
      return int(epoch * spe if epoch <= self.prune_from else after)
    return jnp.where(epoch <= self.prune_from, epoch * spe, after)

  def data_epoch_of(self, step):
    """The data epoch that step `step` belongs to (an int, or an array under
    a trace)."""
    spe = self.steps_per_epoch
    if self.prune_from is None:
      return step // spe
    full = self.prune_from * spe
    after = self.prune_from + (step - full) // self.pruned_steps
    if isinstance(step, (int, np.integer)):
      return int(step // spe if step < full else after)
    return jnp.where(step < full, step // spe, after)

  def dispatch_end(self, step: int) -> int | None:
    """The step a dispatch starting at `step` must stop at: the end of its
    data epoch when the next one is pruned (its images are chosen from the
    loss table as it stands there); None: any."""
    epoch = self.data_epoch_of(step)
    if not self.pruned(epoch + 1):
      return None
    return self.data_epoch_start(epoch) + self.data_epoch_steps(epoch)


def run_steps(config: Config) -> RunSteps:
  """Steps per epoch and total steps of a resolved config (its
  data.train_size filled in): train.num_steps when set, else
  train.num_epochs times the whole batches of an epoch."""
  train_size = int(config.data.get("train_size") or 0)
  batch = int(config.train.batch_size)
  if batch <= 0:
    raise ConfigError(f"train.batch_size must be positive, got {batch}")
  steps_per_epoch = train_size // batch  # Drop the remainder.
  if steps_per_epoch <= 0:
    raise ConfigError(
        f"data.train_size={train_size} holds no whole batch of "
        f"train.batch_size={batch}" if train_size else
        "the config's data.train_size is not filled in")
  total = int(config.train.num_steps) or int(
      config.train.num_epochs) * steps_per_epoch
  fraction = float(config.data.prune_fraction)
  if not fraction:
    return RunSteps(steps_per_epoch=steps_per_epoch, total_steps=total)
  kept = train_size - int(fraction * train_size)
  if kept < batch:
    raise ConfigError(
        f"data.prune_fraction={fraction:g} keeps {kept} of the {train_size} "
        f"training images: not one whole batch of train.batch_size={batch}")
  return RunSteps(steps_per_epoch=steps_per_epoch, total_steps=total,
                  prune_from=math.ceil(config.data.prune_from_epochs - 1e-9),
                  kept=kept, pruned_steps=kept // batch)


@dataclasses.dataclass
class Setup:
  """Everything derived from a resolved config (and its data, in training)."""
  config: Config  # Resolved: the data's fields filled in.
  data: Dataset | None  # None when built from the config alone.
  model: Any
  tx: optax.GradientTransformation
  schedule: Callable
  devices: list  # All devices the pmap spans (of every process).
  steps: RunSteps
  # The step from which the optimizer has frozen every parameter of the
  # model's stem (its spec's stem_params), so the train step stops the
  # gradient at the stem's output; None: never (or the model has no stem to
  # freeze).
  stem_frozen_from: int | None = None
  # Entry k (0-based): the step from which the optimizer has frozen the
  # stem and every parameter of the model's first k + 1 blocks (its spec's
  # block_params), so the train step stops the gradient after block k + 1;
  # only the blocks that do freeze, in order.
  frozen_blocks_from: tuple[int, ...] = ()
  # The steps before this one train on data.small_crop_size crops; None:
  # none do.
  small_crop_until: int | None = None
  # The steps before this one train on data.first_crop_size crops (the
  # smaller, earlier stage); None: none do.
  first_crop_until: int | None = None

  def crop_size_at(self, step: int) -> int | None:
    """The side of step `step`'s training images: data.first_crop_size,
    data.small_crop_size, or None (the data's own)."""
    if self.first_crop_until is not None and step < self.first_crop_until:
      return self.config.data.first_crop_size
    if self.small_crop_until is not None and step < self.small_crop_until:
      return self.config.data.small_crop_size
    return None

  def frozen_blocks_at(self, step: int) -> int:
    """How many of the model's blocks after its stem take no gradient at
    step `step` (the stem is frozen too whenever this is above 0)."""
    return sum(1 for s in self.frozen_blocks_from if step >= s)

  @property
  def steps_per_epoch(self) -> int:
    return self.steps.steps_per_epoch

  @property
  def total_steps(self) -> int:
    return self.steps.total_steps

  def epoch_of(self, step):
    return self.steps.epoch_of(step)

  @property
  def pruning(self) -> bool:
    return self.steps.prune_from is not None

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

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(int(d) for d in self.config.data.image_shape)


def check_config(config: Config) -> None:
  """The checks that need no data: sizes, durations and choices."""
  positive = ["train.batch_size", "train.eval_batch_size",
              "train.log_every_steps", "train.checkpoint_every_steps",
              "train.keep_checkpoints", "train.steps_per_dispatch"]
  non_negative = ["train.num_epochs", "train.num_steps",
                  "train.eval_every_epochs", "data.train_limit",
                  "data.test_limit", "data.validation_size",
                  "data.crop_padding", "data.jitter_brightness",
                  "data.jitter_contrast", "data.small_crop_size",
                  "data.first_crop_size"]
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
                       ("data.small_crop_mode", augment.SMALL_CROP_MODES),
                       ("train.final_tta", augment.TTA_MODES)):
    if flat[key] not in choices:
      raise ConfigError(f"{key}={flat[key]!r}; use one of {', '.join(choices)}")
  if not 0 < config.train.final_tta_fraction <= 1:
    raise ConfigError(
        f"train.final_tta_fraction must be in (0, 1] (the fraction of the "
        f"least confident test images that get train.final_tta; 1: all), got "
        f"{config.train.final_tta_fraction}")
  if not 0 <= config.train.stop_at_train_error < 1:
    raise ConfigError(
        f"train.stop_at_train_error must be in [0, 1) (a fraction: 0.25 for "
        f"25%; 0 is off), got {config.train.stop_at_train_error}")
  for stage in ("small", "first"):  # The two crop stages' own settings.
    size = getattr(config.data, f"{stage}_crop_size")
    fraction = getattr(config.data, f"{stage}_crop_fraction")
    if not 0 <= fraction <= 1:
      raise ConfigError(
          f"data.{stage}_crop_fraction must be in [0, 1] (the fraction of "
          f"the training steps on data.{stage}_crop_size crops), got "
          f"{fraction}")
    if bool(size) != bool(fraction):
      raise ConfigError(
          f"data.{stage}_crop_size and data.{stage}_crop_fraction go "
          "together: set both above 0 (or both to 0, off), got "
          f"{size} and {fraction}")
  if config.data.first_crop_size and not (
      config.data.small_crop_size
      and config.data.first_crop_size < config.data.small_crop_size
      and config.data.first_crop_fraction <= config.data.small_crop_fraction):
    raise ConfigError(
        "data.first_crop_size is the stage before data.small_crop_size: it "
        "needs the small crops on, a smaller side and first_crop_fraction <= "
        f"small_crop_fraction; got first {config.data.first_crop_size} for "
        f"{config.data.first_crop_fraction:g} of the steps, small "
        f"{config.data.small_crop_size} for "
        f"{config.data.small_crop_fraction:g}")
  if not 0 <= config.data.prune_fraction < 1:
    raise ConfigError(
        f"data.prune_fraction must be in [0, 1) (the fraction of the training "
        f"images each epoch leaves out, those of lowest loss; 0: off), got "
        f"{config.data.prune_fraction}")
  if config.data.prune_from_epochs < 0:
    raise ConfigError(f"data.prune_from_epochs must be >= 0, got "
                      f"{config.data.prune_from_epochs}")
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


def resolve_with_data(config: Config, data: Dataset) -> Config:
  """A copy of `config` with the data's fields filled in (channel
  statistics, train_size, image_shape, class_names); refuses data the config
  disagrees with (class count, one of those given for other data)."""
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
  for key, value in (("train_size", n_train),
                     ("image_shape", tuple(int(d) for d in data.image_shape)),
                     ("class_names", tuple(str(n) for n in data.class_names))):
    given = config.data.get(key)
    if given and (given if key == "train_size" else tuple(given)) != value:
      raise ConfigError(f"data.{key}={given} but the data has {value}")
    config.data[key] = value
  if not config.data.channel_mean:
    mean, std = channel_stats(data.train_images)
    config.data.channel_mean = tuple(round(float(v), 6) for v in mean)
    config.data.channel_std = tuple(round(float(v), 6) for v in std)
  return config


def build_from_config(config: Config, data: Dataset | None = None, *,
                      checked: bool = False) -> Setup:
  """Model, optimizer, schedule and step counts of a resolved config (one
  whose data fields are filled in: see resolve_with_data). Touches no
  files. `checked`: check_config has passed already (build's)."""
  if not checked:
    check_config(config)
  if not (config.data.train_size and config.data.image_shape
          and config.data.channel_mean):
    raise ConfigError("the config's data fields (data.train_size, "
                      "data.image_shape, data.channel_mean) are not filled in")
  devices = parallel.select_devices(config.train.num_devices)
  parallel.per_device(config.train.batch_size, len(devices), "train.batch_size")
  batch = config.train.batch_size
  steps = run_steps(config)
  steps_per_epoch, total_steps = steps.steps_per_epoch, steps.total_steps
  if config.train.steps_per_dispatch > steps_per_epoch:
    raise ConfigError(
        f"train.steps_per_dispatch={config.train.steps_per_dispatch} exceeds "
        f"the {steps_per_epoch} steps of an epoch")
  model = create_model(config.model, bn_axis_name=parallel.AXIS)
  # Each group's schedule built once: the optimizer's, and the last group's
  # (the catch-all) is the rate the trainer logs.
  schedules = optim.make_group_schedules(
      config.optim, steps_per_epoch, total_steps=total_steps, batch_size=batch)
  schedule = schedules[config.optim.groups[-1].name]
  tx = optim.make_optimizer(config.optim, steps_per_epoch,
                            total_steps=total_steps, batch_size=batch,
                            schedules=schedules)
  # The groups against the model's parameters (shapes only): an unmatched
  # parameter or an idle group is a config error before anything runs.
  paths = list(optim.check_groups(config.optim, param_shapes(model, config)))
  stem = models.stem_params(config.model)
  stem_frozen_from = optim.frozen_from(config.optim, stem, steps_per_epoch)
  frozen_blocks_from = []
  if stem:
    below = list(stem)
    for regex in models.block_params(config.model):
      below += [p for p in paths if re.search(regex, p)]
      step = optim.frozen_from(config.optim, below, steps_per_epoch)
      if step is None:
        break
      frozen_blocks_from.append(step)
  return Setup(config=config, data=data, model=model, tx=tx, schedule=schedule,
               devices=devices, steps=steps,
               stem_frozen_from=stem_frozen_from,
               frozen_blocks_from=tuple(frozen_blocks_from),
               small_crop_until=crop_until(config, model, total_steps),
               first_crop_until=crop_until(config, model, total_steps,
                                           "first"))


def crop_until(config: Config, model: Any, total_steps: int,
               stage: str = "small") -> int | None:
  """Setup.small_crop_until (or, with stage 'first', first_crop_until) of a
  resolved config: round(data.<stage>_crop_fraction * total steps), None
  when off or no step; refuses a side the images or the model cannot take
  (ConfigError)."""
  key = f"{stage}_crop_size"
  size = getattr(config.data, key)
  until = round(getattr(config.data, f"{stage}_crop_fraction") * total_steps)
  if not size or not until:
    return None
  shape = tuple(int(d) for d in config.data.image_shape)
  if len(shape) != 3 or shape[0] != shape[1] or size >= shape[0]:
    raise ConfigError(
        f"data.{key}={size} needs square images larger than it; "
        f"the data's are {'x'.join(map(str, shape))}")
  small = config.copy()
  small.data.image_shape = (size, size, shape[2])
  try:
    same = (jax.tree.map(lambda s: s.shape, param_shapes(model, small))
            == jax.tree.map(lambda s: s.shape, param_shapes(model, config)))
  except Exception:  # noqa: BLE001 - the model cannot run at that side.
    same = False
  if not same:
    raise ConfigError(
        f"data.{key}={size}: model {config.model.name!r} cannot "
        f"train {size}x{size} crops with the parameters of its "
        f"{shape[0]}x{shape[1]} images (its head depends on the side, or "
        "the side is too small for its pooling; speednet takes 9 and up)")
  return until


# Parameter shapes by (model section, image shape): tracing the init is
# most of a build's cost, and a study's members mostly share their model.
_PARAM_SHAPES: dict[str, Any] = {}


def param_shapes(model: Any, config: Config) -> Any:
  """The model's parameters as ShapeDtypeStructs (traced, never run; the
  same model section and image shape are traced once per process)."""
  image_shape = tuple(int(d) for d in config.data.image_shape)
  key = json.dumps([config.model.to_dict(), image_shape], sort_keys=True,
                   default=str)
  if key not in _PARAM_SHAPES:
    sample = jax.ShapeDtypeStruct((1,) + image_shape, jnp.float32)
    rng = jax.random.PRNGKey(0)
    _PARAM_SHAPES[key] = jax.eval_shape(
        lambda x: model.init({"params": rng, "dropout": rng}, x,
                             train=False), sample)["params"]
  return _PARAM_SHAPES[key]


def build(config: Config, data: Dataset | None = None) -> Setup:
  """Validates the config, loads its data (unless given), fills in the
  data's fields and builds model and optimizer.

  Touches no files: every bad-input error surfaces here, before a workdir is
  written.
  """
  check_config(config)
  if data is None:
    data = load_from_config(config.data, config.seed)
  return build_from_config(resolve_with_data(config, data), data,
                           checked=True)


def create_train_state(setup: Setup) -> TrainState:
  """A fresh, unreplicated state on the default device. A model with a
  data-dependent init (its spec's `data_init`: speednet's whitening layer)
  computes it from `setup.data`; built from the config alone, it keeps its
  plain init (the shapes are the same: enough for a restore target).

  The init and the assembly of the state are each one compiled program:
  run op by op, every initializer and every optimizer slot compiled a small
  program of its own for each shape. On the 2-core CPU, in a fresh process:
  tiny test model 11.6 -> 8.1 s, VGG-16 16.8 -> 9.9 s, speednet 14.5 ->
  6.2 s (2026-11-30)."""
  root = jax.random.PRNGKey(setup.config.seed)
  init_key, dropout_key = jax.random.split(root)
  sample = jnp.zeros((1,) + setup.image_shape, jnp.float32)

  def init(key, x):
    return setup.model.init({"params": key, "dropout": key}, x, train=False)

  variables = jax.jit(init)(init_key, sample)
  params = variables["params"]
  hook = models.data_init(setup.config.model)
  if hook is not None and setup.data is not None:
    init, own = hook
    params = init.apply(setup.model, params,
                        init_sample(setup, init.num_images(own)))
  batch_stats = variables.get("batch_stats", {})

  def assemble(params, batch_stats, rng):
    example_loss = {}
    if setup.pruning:
      never = jnp.full((int(setup.config.data.train_size),), jnp.inf,
                       jnp.float32)
      example_loss = {"loss": never, "scores": jnp.copy(never)}
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
        rng=rng,
        lookahead=slow,
        example_loss=example_loss)

  return jax.jit(assemble)(params, batch_stats, dropout_key)


def init_sample(setup: Setup, count: int) -> np.ndarray:
  """A seeded random sample of `count` normalized training images (all of
  them if there are fewer), for a data-dependent init (a folder's images
  come sorted by class: its first ones are one class). Concrete values even
  when called under a trace (jax.eval_shape, or jit in the benchmark):
  computed eagerly."""
  cfg = setup.config
  images = setup.data.train_images
  count = min(len(images), int(count))
  pick = np.sort(np.random.default_rng([cfg.seed, 1]).choice(
      len(images), count, replace=False))
  mean, std = setup.mean_std
  with jax.ensure_compile_time_eval():
    return np.asarray(augment.normalize(jnp.asarray(images[pick]),
                                        cfg.data.normalization, mean, std))
