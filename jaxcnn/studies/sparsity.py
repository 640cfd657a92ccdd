"""L1 strength against weight sparsity, activation sparsity and accuracy."""
from jaxcnn.studies import ALEX_SMALL, TINY_FAST, Member, Study


def _members(scale):
  # L1 on every conv/fc kernel (the decay filter is widened to all kernels).
  return [Member(f"l1_{l1:g}", (f"optim.l1={l1}",
                                "optim.weight_decay_filter=kernel"))
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
