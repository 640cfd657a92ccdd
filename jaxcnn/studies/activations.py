"""ReLU against leaky ReLU, ELU, tanh and sigmoid: time to a training error,
final accuracy, dead and saturated units.

At the small scale: the half-width AlexNet-like net, every activation at one
shared rate. At the full scale: the AlexNet paper's figure 1 itself, the
four-layer cuda-convnet net (`experiments/convnet4.py`) on all 50,000
training images with no augmentation, weight decay, dropout or
normalisation layer, ReLU against tanh, each at its own best rate of a
sweep: the rate that reaches 25% training error in the fewest epochs (seed
0), then more seeds at that rate (`sweep`: one command runs both). A run
ends at 25% training error (`train.stop_at_train_error`), or at its cap:
ReLU's 20 epochs, tanh's 40; a tanh that does not reach 25% inside its cap
gives a lower bound on the ratio.
"""
from jaxcnn.studies import ALEX_SMALL, TINY_FAST, Member, Study

# No crop/flip: the question is how fast the training set is fitted, as in
# the paper's figure 1, and without augmentation 25% training error is
# within reach of a short run.
NO_AUGMENTATION = ("data.random_crop=false", "data.random_flip=false")

# Full scale: rates a factor 2 apart (momentum 0.9, batch 128) around the
# best of a 2-epoch pilot on 12,800 images (0.03 for both; at 0.1 ReLU's
# units died, 90% error, and tanh was slower than at 0.03), and the epochs
# each activation may take.
FULL_RATES = (0.01, 0.02, 0.04, 0.08)
FULL_CAP_EPOCHS = {"relu": 20, "tanh": 40}


def _members(scale):
  if scale.name == "full":
    return [Member(f"{act}@{lr:g}",
                   (f"model.activation={act}", f"optim.groups.*.lr={lr}",
                    f"train.num_epochs={cap}"), exp="convnet4")
            for act, cap in FULL_CAP_EPOCHS.items() for lr in FULL_RATES]
  return [Member(a, (f"model.activation={a}",))
          for a in ("relu", "leaky_relu", "elu", "tanh", "sigmoid")]


STUDY = Study(
    "activations",
    question="How fast does each activation reach 25% (and 50%) training "
             "error, how accurate is it at the end, how many ReLU units "
             "die and how many tanh/sigmoid units saturate?",
    paper="AlexNet paper, figure 1: a four-layer CNN with ReLUs reaches "
          "25% training error on CIFAR-10 six times faster than with "
          "tanh, each net at the learning rate that trains it fastest, no "
          "regularization of any kind.",
    base="alexnet", members=_members,
    scale_overrides={"small": ALEX_SMALL + NO_AUGMENTATION,
                     # All 50,000 images trained on (no validation split:
                     # the choice is made on the training error), the
                     # training error logged every 78 steps (1/5 epoch),
                     # a checkpoint every epoch.
                     "full": ("data.validation_size=0",
                              "train.stop_at_train_error=0.25",
                              "train.log_every_steps=78",
                              "train.checkpoint_every_steps=391"),
                     "tiny": TINY_FAST},
    epochs={"small": 15, "full": 40, "tiny": 2},
    extras=("dead", "saturated", "grads", "best_lr"),
    sweep={"full": "epochs_to_25"})
