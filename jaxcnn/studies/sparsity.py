"""L1 strength against weight sparsity, activation sparsity and accuracy."""
from jaxcnn.studies import ALEX_SMALL, TINY_FAST, Member, Study


def _members(scale):
  # L1 on every conv/fc kernel, with the recipe's weight decay 0.004: the
  # first group (the recipe's fc384/fc192 kernels; the tiny scale's
  # kernels) widened to all kernels.
  return [Member(f"l1_{l1:g}", ("optim.groups.0.match=kernel",
                                "optim.groups.0.weight_decay=0.004",
                                f"optim.groups.0.l1={l1}"))
          for l1 in (0.0, 1e-5, 1e-4, 1e-3)]


STUDY = Study(
    "sparsity",
    question="L1 strength against weight sparsity, activation sparsity "
             "and accuracy.",
    paper="Han et al. (2015): most weights can be pruned; L1 drives "
          "weights to zero.",
    base="alexnet", members=_members,
    scale_overrides={"small": ALEX_SMALL, "full": ALEX_SMALL,
                     "tiny": TINY_FAST},
    epochs={"small": 6, "full": 30}, extras=("sparsity", "dead"))
