"""Input normalization (none, per-channel, per-image), with ReLU and tanh."""
from jaxcnn.studies import ALEX_SMALL, Member, Study


def _members(scale):
  return [Member(f"{a}_{n}", (f"model.activation={a}",
                              f"data.normalization={n}"))
          for a in ("relu", "tanh") for n in ("none", "channel", "image")]


STUDY = Study(
    "input_norm",
    question="Does the input normalization matter: none (pixels in "
             "[0, 1]), per-channel dataset mean/std, per-image "
             "standardization; with ReLU and with tanh?",
    paper="LeCun et al., Efficient BackProp (1998): inputs should be "
          "centred and scaled; the TF tutorial uses per-image "
          "standardization.",
    base="alexnet", members=_members,
    scale_overrides={"small": ALEX_SMALL, "full": ALEX_SMALL},
    epochs={"small": 6, "full": 30},
    extras=("dead", "saturated", "grads"))
