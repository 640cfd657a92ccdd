"""jaxcnn's speed recipe (experiments/speedrun_pruned.py) with each of its
techniques removed or put back to its source's setting in turn, so the
report says what each one buys in the recipe as it stands: loss-based data
pruning, the small early crops, label smoothing 0.2, hiverge's colour jitter
and SiLU, the kernel renormalisation, the whitening stem, the filters'
decoupled decay, alternating flips and translation; plus two settings not
in the recipe that earlier runs pointed at (a larger pruned fraction, the
whitening bias trained for 3 epochs) and ten that would make it cheaper
(more of the steps on small crops, an earlier stage of smaller crops
still: data.first_crop_*, or the first conv group frozen for the last
steps: optim.freeze).

The small scale is larger than the other speed ablations' (10,000 training
images, not 4,500) so that pruning, which acts on the data epochs, sees
more than a few hundred images a class, and it is meant to be run with
several seeds (one seed's test accuracy moves by about half a point)."""
from jaxcnn.studies import Study
from jaxcnn.studies.speedrun_ablation import (TINY_MUON_GROUPS,
                                              ablation_members)
from jaxcnn.studies.speedrun_hiverge_ablation import hiverge_groups

SMALL_BATCH = 256  # The small scale's batch.
SMALL_TRAIN = 10_000  # Training images at the small scale (500 more held out).
SMALL_STEPS_PER_EPOCH = SMALL_TRAIN // SMALL_BATCH  # 39.

# (name, overrides): every other setting the recipe's.
ABLATIONS = (
    ("recipe", ()),
    # jaxcnn's own levers.
    ("no_pruning", ("data.prune_fraction=0.0",)),
    # Not a removal: a larger easy share sits out.
    ("prune_0.4", ("data.prune_fraction=0.4",)),
    # Every step on whole 32x32 images (the same steps, each dearer).
    ("no_small_crops", ("data.small_crop_size=0",
                        "data.small_crop_fraction=0.0")),
    # Not removals: more of the steps on 24x24 crops (the recipe's 0.6),
    # each such step about 0.53x a whole-image step at full width: at 277
    # steps 0.7 is about 7% less training time, 0.8 about 13%.
    ("small_crops_0.7", ("data.small_crop_fraction=0.7",)),
    ("small_crops_0.8", ("data.small_crop_fraction=0.8",)),
    # Not removals: an earlier stage of smaller crops still (data.
    # first_crop_*), the whole-image steps kept. At full width a 20x20 step
    # costs about 0.36x a whole-image step and a 16x16 one about 0.2x (24x24:
    # 0.54x), so at 277 steps these are about 7%, 14% and 10% less time.
    ("first_crops_20_0.3", ("data.first_crop_size=20",
                            "data.first_crop_fraction=0.3")),
    ("first_crops_16_0.3", ("data.first_crop_size=16",
                            "data.first_crop_fraction=0.3")),
    ("first_crops_20_0.45", ("data.first_crop_size=20",
                             "data.first_crop_fraction=0.45")),
    # Every early step on 20x20 (none left on 24x24): about 14% less time.
    ("first_crops_20_0.6", ("data.first_crop_size=20",
                            "data.first_crop_fraction=0.6")),
    # Not removals: the first conv group (then the second too) frozen for
    # the last steps (optim.freeze), so the backward pass stops above it.
    # At full width, batch 512, a step with group 1 frozen costs about
    # 0.73x, with groups 1 and 2 about 0.40x; at 277 steps these are about
    # 15%, 11%, 7% and 20% less time. Epochs of the small scale's 9.
    ("freeze_group1_0.6", ('optim.freeze=[["^group1/", 5.4]]',)),
    ("freeze_group1_0.7", ('optim.freeze=[["^group1/", 6.3]]',)),
    ("freeze_group1_0.8", ('optim.freeze=[["^group1/", 7.2]]',)),
    ("freeze_group1_0.6_group2_0.9", (
        'optim.freeze=[["^group1/", 5.4], ["^group2/", 8.1]]',)),
    ("label_smoothing_0.09", ("train.label_smoothing=0.09",)),
    # hiverge's.
    ("no_color_jitter", ("data.jitter_brightness=0.0",
                         "data.jitter_contrast=0.0")),
    ("gelu_not_silu", ("model.speednet.group_activation=gelu",)),
    ("no_filter_decay", ("optim.groups.filters.weight_decay=0.0",)),
    # Not a removal: airbench94's whitening bias schedule; one seed of the
    # hiverge ablation put it 1.1 points up.
    ("whiten_bias_3_epochs", (
        "optim.groups.whiten_bias.frozen_from_epochs=3.0",
        "optim.groups.whiten_bias.schedule.length_epochs=3.0")),
    # Shared by both records.
    ("no_kernel_renormalisation", ("optim.groups.filters.normalize=false",)),
    ("no_whitening", ("model.speednet.whiten=false",
                      "optim.groups.whiten_kernel.frozen_from_epochs=none",
                      "optim.groups.whiten_bias.frozen_from_epochs=none")),
    ("random_flip", ("data.flip_mode=random",)),
    ("no_translate", ("data.random_crop=false",)),
)


STUDY = Study(
    "speedrun_pruned_ablation",
    question="What does each technique of jaxcnn's speed recipe "
             "(speedrun_pruned) buy where it stands: loss-based data pruning, "
             "the small early crops, label smoothing 0.2, colour jitter, "
             "SiLU, the filters' decay, kernel renormalisation, the whitening "
             "stem, alternating flips and translation? And do a larger pruned "
             "fraction or a longer-trained whitening bias help, and what do "
             "more steps on small crops, an earlier stage of smaller "
             "crops, or the first conv group frozen late, cost?",
    paper="airbench (Jordan 2024, arXiv 2404.00498) and hiverge/"
          "cifar10-speedrun each measure their techniques in epochs saved "
          "to 94%. Paul et al. 2021 (arXiv 2107.07075) score examples "
          "early in training and train a new run without the easiest; the "
          "recipe instead ranks them by their last loss at every epoch. "
          "FreezeOut (Brock et al. 2017, arXiv 1706.04983) freezes the "
          "first layers one by one late in training to save their "
          "backward pass.",
    base="speedrun_pruned", members=ablation_members(ABLATIONS),
    # Small: a quarter-width net on 10,000 training images (500 more held
    # out for validation) at batch 256, 9 epochs (351 steps; the recipe's
    # 8.66 epochs rounded up, the first 60% on 24x24 crops, pruning from
    # epoch 2), the recipe's per-example rates times 256, tested on all
    # 5,000 test images; accuracies only.
    scale_overrides={
        "small": (f"data.train_limit={SMALL_TRAIN + 500}",
                  "model.width=0.25", f"train.batch_size={SMALL_BATCH}",
                  "data.test_limit=5000",
                  hiverge_groups(SMALL_BATCH),
                  f"train.log_every_steps={SMALL_STEPS_PER_EPOCH}",
                  "train.eval_every_epochs=0",
                  "train.checkpoint_every_steps=1000",
                  "train.collect_stats=false"),
        "full": ("train.collect_stats=false", "train.eval_every_epochs=0"),
        "tiny": (TINY_MUON_GROUPS,),
    },
    epochs={"small": 9, "full": 9}, extras=("paired",))
