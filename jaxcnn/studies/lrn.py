"""Local response normalization against none and BatchNorm on the
AlexNet-like net."""
from jaxcnn.studies import ALEX_SMALL, Member, Study


def _members(scale):
  return [Member(n, (f"model.norm={n}",)) for n in ("lrn", "none", "batchnorm")]


STUDY = Study(
    "lrn",
    question="Does local response normalization help the AlexNet-like "
             "net, and how does BatchNorm in its place compare?",
    paper="AlexNet paper, section 3.3: LRN lowers the test error of a "
          "four-layer CNN on CIFAR-10 from 13% to 11%.",
    base="alexnet", members=_members,
    scale_overrides={"small": ALEX_SMALL, "full": ALEX_SMALL},
    epochs={"small": 15, "full": 30})
