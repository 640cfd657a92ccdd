"""airbench94's speed recipe (experiments/speedrun_airbench94.py) with each
of its techniques removed in turn, so the report says what each one buys."""
from jaxcnn import groups
from jaxcnn.config import load_experiment
from jaxcnn.studies import Member, Study

SMALL_BATCH = 256  # The small scale's batch.


def muon_groups(batch: int = SMALL_BATCH) -> str:
  """experiments/speedrun.py's groups (airbench94_muon's param_configs) at
  another batch: its SGD rates are per summed example, so they scale with
  the batch (their L2 coefficients wd / lr do not: wd scales too); Muon's
  does not. As the override that replaces optim.groups."""
  config = load_experiment("speedrun")
  out = []
  for g in config.optim.groups:
    g = g.copy()
    if g.optimizer != "muon":
      g.lr = g.lr * batch / config.train.batch_size
    out.append(g)
  return groups.override(out)


# What removing each technique means; every other setting stays the recipe's.
ABLATIONS = (
    ("recipe", ()),
    # The first layer an ordinary trainable conv, trained as the others.
    ("no_whitening", ("model.speednet.whiten=false",
                      "optim.groups.whiten_kernel.frozen_from_epochs=none",
                      "optim.groups.whiten_bias.frozen_from_epochs=none")),
    ("no_label_smoothing", ("train.label_smoothing=0.0",)),
    ("bn_with_scale", ("model.bn_scale=true",)),
    ("bn_momentum_0.9", ("model.bn_momentum=0.9",)),
    ("no_bias_lr_scale", ("optim.groups.bn_bias.lr=11.5",)),
    ("momentum_not_nesterov", ("optim.groups.*.optimizer=momentum",)),
    ("cosine_not_triangular", ("optim.schedule=cosine",)),
    ("no_lookahead", ("optim.lookahead_every_steps=0",)),
    ("random_flip", ("data.flip_mode=random",)),
    ("zero_padded_translate", ("data.crop_pad_mode=zeros",)),
    ("no_translate", ("data.random_crop=false",)),
    # Not a removal: experiments/speedrun.py's optimizer (airbench94_muon's)
    # in place of Nesterov SGD and lookahead, its SGD rates scaled to the
    # small scale's batch of 256 (muon_groups).
    ("muon_optimizer", (
        muon_groups(SMALL_BATCH),
        "optim.triangle_start=1.0", "optim.triangle_peak=0.0",
        "optim.triangle_end=0.0", "optim.lookahead_every_steps=0",
        f"model.speednet.logit_scale={1 / 256}",
        "model.speednet.head_init_std=1.0")),
)


# The tiny scale trains the tiny model (conv1, conv2, bn1, bn2, logits),
# which has no whitening layer and no head named head: the recipe's groups
# less the whitening's, and the members' overrides of the whitening groups
# left out (there is nothing to ablate). (The scale's widening of the first
# group to every kernel comes before these and is replaced by them.)
_SGD = dict(units="per_1024", momentum=0.85, weight_decay=0.0153)
TINY_GROUPS = groups.override((
    groups.group("bn_bias", r"(^|/)bn[^/]*/bias$", "nesterov", 11.5 * 64,
                 **_SGD),
    groups.group("rest", r".*", "nesterov", 11.5, **_SGD)))
TINY_MUON_GROUPS = groups.override((
    groups.group("filters", r"(^|/)conv\d+/kernel$", "muon", 0.24,
                 momentum=0.6, ns_steps=3, normalize=True),
    groups.group("rest", r".*", "nesterov", 0.053 * 32, momentum=0.85,
                 weight_decay=2e-6 / 0.053)))


def _at_tiny(overrides: tuple[str, ...]) -> tuple[str, ...]:
  out = []
  for item in overrides:
    if item.startswith("optim.groups.whiten_"):
      continue
    if item.startswith("optim.groups="):
      item = TINY_MUON_GROUPS
    if item.startswith("optim.freeze="):
      # The tiny model has no conv groups: its first (second) conv and
      # BatchNorm stand for speednet's group 1 (2).
      item = item.replace("^group1/", "^(conv1|bn1)/").replace(
          "^group2/", "^(conv2|bn2)/")
    out.append(item)
  return tuple(out)


def ablation_members(ablations):
  """A speed ablation's members(scale) from its (name, overrides) table: at
  the tiny scale each member's overrides go through _at_tiny (no whitening
  groups; Muon's groups for the tiny model)."""
  def members(scale):
    fix = _at_tiny if scale.name == "tiny" else tuple
    return [Member(name, fix(overrides)) for name, overrides in ablations]
  return members


STUDY = Study(
    "speedrun_ablation",
    question="What does each technique of the CIFAR-10 speed recipe buy: "
             "patch whitening, label smoothing, BatchNorm without scale and "
             "with a short memory, a higher learning rate for BatchNorm "
             "biases, Nesterov momentum, the triangular schedule, lookahead, "
             "alternating flips and reflect-padded translation? And what "
             "does airbench94_muon's optimizer (Muon) buy in place of "
             "Nesterov SGD and lookahead?",
    paper="airbench (Jordan 2024, arXiv 2404.00498), section 3 and its "
          "ablations: each technique saves epochs to 94% on the official "
          "set; alternating flip alone is worth about 0.1-0.3 points at a "
          "fixed short budget.",
    base="speedrun_airbench94", members=ablation_members(ABLATIONS),
    # 5,000 images at batch 256 (19 steps an epoch; the recipe's learning
    # rate and weight decay are per 1024 examples, so they carry over), a
    # quarter-width net, no per-layer statistics (the report reads the
    # accuracies, with and without test-time augmentation).
    scale_overrides={
        "small": ("model.width=0.25", "train.batch_size=256",
                  "train.log_every_steps=19", "train.eval_every_epochs=2",
                  "train.checkpoint_every_steps=1000",
                  "train.collect_stats=false"),
        "full": ("train.collect_stats=false", "train.eval_every_epochs=0"),
        "tiny": (TINY_GROUPS,),
    },
    epochs={"small": 10, "full": 10})
