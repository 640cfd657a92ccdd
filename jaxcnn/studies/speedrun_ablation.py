"""airbench94's speed recipe (experiments/speedrun_airbench94.py) with each
of its techniques removed in turn, so the report says what each one buys."""
from jaxcnn.studies import Member, Study

# What removing each technique means; every other setting stays the recipe's.
ABLATIONS = (
    ("recipe", ()),
    ("no_whitening", ("model.speednet.whiten=false", "optim.freeze_filter=",
                      "optim.freeze_after_filter=")),
    ("no_label_smoothing", ("train.label_smoothing=0.0",)),
    ("bn_with_scale", ("model.bn_scale=true",)),
    ("bn_momentum_0.9", ("model.bn_momentum=0.9",)),
    ("no_bias_lr_scale", ("optim.bias_lr_scale=1.0",)),
    ("momentum_not_nesterov", ("optim.optimizer=momentum",)),
    ("cosine_not_triangular", ("optim.schedule=cosine",)),
    ("no_lookahead", ("optim.lookahead_every_steps=0",)),
    ("random_flip", ("data.flip_mode=random",)),
    ("zero_padded_translate", ("data.crop_pad_mode=zeros",)),
    ("no_translate", ("data.random_crop=false",)),
    # Not a removal: experiments/speedrun.py's optimizer (airbench94_muon's)
    # in place of Nesterov SGD and lookahead, its SGD rates scaled to the
    # small scale's batch of 256 (0.67 * 256 / 0.24).
    ("muon_optimizer", (
        "optim.optimizer=muon", "optim.hparam_units=step",
        "optim.learning_rate=0.24", "optim.momentum=0.6",
        "optim.muon_ns_steps=3", "optim.muon_normalize=true",
        r"optim.muon_filter=(^|/)conv\d+/kernel$", "optim.muon_rest=nesterov",
        "optim.muon_rest_momentum=0.85",
        f"optim.muon_rest_lr_scale={0.67 * 256 / 0.24}",
        "optim.bias_lr_filter=bias$", f"optim.bias_lr_scale={0.053 / 0.67}",
        f"optim.weight_decay={2e-6 / 0.67}",
        "optim.weight_decay_filter=bias$|^head/",
        "optim.triangle_start=1.0", "optim.triangle_peak=0.0",
        "optim.triangle_end=0.0", "optim.lookahead_every_steps=0",
        f"model.speednet.logit_scale={1 / 256}",
        "model.speednet.head_init_std=1.0")),
)


def _members(scale):
  return [Member(name, overrides) for name, overrides in ABLATIONS]


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
    base="speedrun_airbench94", members=_members,
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
    },
    epochs={"small": 10, "full": 10})
