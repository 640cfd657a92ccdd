"""ReLU against leaky ReLU, ELU, tanh and sigmoid on the AlexNet-like net:
time to a training error, final accuracy, dead and saturated units."""
from jaxcnn.studies import ALEX_SMALL, TINY_FAST, Member, Study

# No crop/flip: the question is how fast the training set is fitted, as in
# the paper's figure 1, and without augmentation 25% training error is
# within reach of a short run.
NO_AUGMENTATION = ("data.random_crop=false", "data.random_flip=false")


def _members(scale):
  return [Member(a, (f"model.activation={a}",))
          for a in ("relu", "leaky_relu", "elu", "tanh", "sigmoid")]


STUDY = Study(
    "activations",
    question="How fast does each activation reach 25% (and 50%) training "
             "error, how accurate is it at the end, how many ReLU units "
             "die and how many tanh/sigmoid units saturate?",
    paper="AlexNet paper, figure 1: a four-layer CNN with ReLUs reaches "
          "25% training error on CIFAR-10 six times faster than with "
          "tanh.",
    base="alexnet", members=_members,
    scale_overrides={"small": ALEX_SMALL + NO_AUGMENTATION,
                     "full": ALEX_SMALL + NO_AUGMENTATION,
                     "tiny": TINY_FAST},
    epochs={"small": 15, "full": 30, "tiny": 2},
    extras=("dead", "saturated", "grads"))
