"""Optimizers, each at its best learning rate of a short sweep."""
from jaxcnn.studies import Member, Study

# Half-decade steps around each optimizer's usual learning rate; the sweep
# reaches one step past the best of a first, three-point run (whose best lay
# at its top end for every optimizer but SGD), so the best is bracketed.
LEARNING_RATES = {
    "sgd": (0.03, 0.1, 0.3),
    "momentum": (0.003, 0.01, 0.03, 0.1),
    "nesterov": (0.003, 0.01, 0.03, 0.1),
    "adam": (1e-4, 3e-4, 1e-3, 3e-3),
    "adamw": (1e-4, 3e-4, 1e-3, 3e-3),
    "rmsprop": (1e-4, 3e-4, 1e-3, 3e-3),
}


def _members(scale):
  out = []
  for opt, lrs in LEARNING_RATES.items():
    for lr in lrs:
      # Every group (the recipe's fc384/fc192 kernels with their weight
      # decay, and the rest) trained by the optimizer at the rate.
      over = (f"optim.groups.*.optimizer={opt}", f"optim.groups.*.lr={lr}")
      if opt == "rmsprop":
        over += ("optim.groups.*.momentum=0.0",)
      if opt == "adamw":
        # Decoupled decay, scaled by the schedule in optax.adamw: 0.004 * lr
        # would be negligible, so AdamW gets its customary 0.05.
        over += ("optim.groups.fc_kernels.weight_decay=0.05",)
      out.append(Member(f"{opt}@{lr:g}", over))
  return out


STUDY = Study(
    "optimizers",
    question="SGD, momentum, Nesterov, Adam, AdamW and RMSProp, each at "
             "its best learning rate of a three- or four-point sweep.",
    paper="Wilson et al. (2017): adaptive methods generalize worse than "
          "SGD with momentum on CIFAR-10.",
    base="alexnet", members=_members,
    scale_overrides={"small": ("optim.schedule=constant",),
                     "full": ("optim.schedule=cosine",)},
    epochs={"small": 6, "full": 30}, extras=("best_lr",))
