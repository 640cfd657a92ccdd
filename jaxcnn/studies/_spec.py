"""What a study is (Member, Scale, Study), what each scale means, and how a
study resolves into the configs of its runs."""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from jaxcnn.config import Config, ConfigError, apply_overrides, \
    load_experiment

SCALES = ("tiny", "small", "full")
# Training-error thresholds whose time-to-reach the tables give. 25% is the
# AlexNet paper's (figure 1); 60% and 50% are reachable in the few epochs of
# the small scale, which makes the comparison possible there.
THRESHOLDS = (0.6, 0.5, 0.25)
# The optional report sections a study can name (jaxcnn.study_report).
EXTRAS = ("dead", "saturated", "sparsity", "grads", "flops", "ema", "best_lr",
          "paired")

# At the small scale the AlexNet-like studies share one optimizer setting that
# every member can train with: momentum 0.9 at lr 0.01 (the recipe's plain SGD
# at 0.1 has the same effective step but leaves sigmoid nearly still in a few
# epochs), constant (the recipe's decay starts at epoch 350 anyway).
ALEX_SMALL = ("optim.groups.*.optimizer=momentum", "optim.groups.*.lr=0.01",
              "optim.schedule=constant")
# The tiny scale (tests): a setting under which the tiny model learns the
# synthetic classes within its few steps: momentum 0.9 at 0.05, no weight
# decay.
TINY_FAST = ("optim.groups.*.optimizer=momentum", "optim.groups.*.lr=0.05",
             "optim.groups.*.weight_decay=0.0", "optim.schedule=constant")


@dataclasses.dataclass(frozen=True)
class Member:
  name: str  # Also the workdir prefix: letters, digits, '_', '-', '.'.
  overrides: tuple[str, ...] = ()
  exp: str | None = None  # None: the study's base experiment.


@dataclasses.dataclass(frozen=True)
class Scale:
  """What a scale means for a study: the epochs, plus overrides for all."""
  name: str
  epochs: int
  overrides: tuple[str, ...]


@dataclasses.dataclass
class Study:
  name: str
  question: str  # The seed question the study answers.
  paper: str  # What the literature says, for the README / report.
  base: str  # Base experiment.
  # members(scale) -> the members; the scale is passed so that a member can
  # place e.g. a step boundary at a fraction of the run.
  members: Callable[[Scale], list[Member]]
  # Overrides for every member at a scale, after the scale's generic ones.
  scale_overrides: dict[str, tuple[str, ...]] = dataclasses.field(
      default_factory=dict)
  epochs: dict[str, int] = dataclasses.field(default_factory=dict)
  # Extra report parts (EXTRAS): 'dead', 'saturated', 'sparsity', 'grads',
  # 'flops', 'ema', 'best_lr' (group members name@lr and pick the best lr
  # per group), 'paired' (every member minus the first, seed by seed).
  extras: tuple[str, ...] = ()
  notes: str = ""
  # Training errors whose time-to-reach the main table gives.
  thresholds: tuple[float, ...] = THRESHOLDS
  # Scales at which the members named GROUP@LR are a sweep: {scale: what
  # the best of each group is chosen on}, 'validation' (the highest final
  # raw validation accuracy) or 'epochs_to_<T>' (the fewest epochs to T%
  # training error). There every member trains seed 0 only; then the best
  # member of each group, chosen on seed 0, trains the other seeds.
  sweep: dict[str, str] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if isinstance(self.extras, str):
      raise ConfigError(f"study {self.name!r}: extras is a tuple of names, "
                        f"got the string {self.extras!r}")
    unknown = [x for x in self.extras if x not in EXTRAS]
    if unknown:
      raise ConfigError(
          f"study {self.name!r}: unknown report extra(s) "
          f"{', '.join(map(repr, unknown))}; known: {', '.join(EXTRAS)}")


def scale_of(study: Study, scale: str) -> Scale:
  """The scale as `study` runs it: the overrides every study gets at that
  scale, then the study's own."""
  if scale == "tiny":
    epochs = study.epochs.get("tiny", 2)
    # 256 synthetic images at batch 32: 8 steps an epoch.
    over = ("data.source=synthetic", "data.synthetic_train_size=256",
            "data.synthetic_test_size=128", "model.name=tiny",
            "model.norm=batchnorm", "model.dropout=0.0",
            "train.batch_size=32", "train.eval_batch_size=64",
            "train.log_every_steps=4", "train.checkpoint_every_steps=8",
            # The first parameter group (the recipes' decayed kernels: VGG's
            # all, AlexNet's fc384/fc192) widened to every kernel, so that
            # it matches some parameter of the tiny model.
            "optim.groups.0.match=kernel")
  elif scale == "small":
    epochs = study.epochs.get("small", 6)
    # 5000 training images: 39 steps an epoch at batch 128; logs about twice
    # an epoch (each log also runs the statistics on the probe batch). Half
    # width: on the shared 2-core CPU the full-width AlexNet-like net ran at
    # 1-3 s a step, the half-width one (3.5x fewer multiply-adds) fits a
    # member in a few minutes. Studies of the VGG net set their own width.
    # 500 of them (50 a class) are the validation split that choices (the
    # best learning rate) are made on: 4500 are trained on, 35 steps an
    # epoch.
    over = ("data.train_limit=5000", "data.test_limit=1000",
            "data.validation_size=500", "model.width=0.5",
            "train.batch_size=128", "train.eval_batch_size=500",
            "train.log_every_steps=20", "train.checkpoint_every_steps=78")
  elif scale == "full":
    epochs = study.epochs.get("full", 30)
    # 5000 of CIFAR-10's 50,000 training images are the validation split.
    over = ("data.validation_size=5000", "train.log_every_steps=100",
            "train.checkpoint_every_steps=2000")
  else:
    raise ConfigError(f"unknown scale {scale!r}; use one of {SCALES}")
  over += ("train.num_steps=0", f"train.num_epochs={epochs}",
           "train.eval_every_epochs=1", "train.collect_stats=true",
           "train.progress_bar=false", "train.keep_checkpoints=1")
  return Scale(scale, epochs, over + study.scale_overrides.get(scale, ()))


def member_configs(study: Study, scale: str, seeds: int,
                   data: str | None = None,
                   only: Sequence[str] | None = None
                   ) -> list[tuple[Member, int, Config]]:
  """(member, seed, config) for every run of the study, in run order.

  `data` replaces the base experiment's data source (the one training uses
  by default) at the small and full scales; the tiny scale is synthetic.
  """
  s = scale_of(study, scale)
  members = study.members(s)
  if only:
    unknown = set(only) - {m.name for m in members}
    if unknown:
      raise ConfigError(
          f"study {study.name} has no member(s) {', '.join(sorted(unknown))}; "
          f"its members: {', '.join(m.name for m in members)}")
    members = [m for m in members if m.name in only]
  out = []
  for m in members:
    base = load_experiment(m.exp or study.base)
    for seed in range(seeds):
      over = list(s.overrides) + list(m.overrides) + [f"seed={seed}"]
      if data is not None and scale != "tiny":
        over.append(f"data.source={data}")
      out.append((m, seed, apply_overrides(base, over)))
  return out
