"""EMA decays, with and without TensorFlow's (1+t)/(10+t) ramp."""
from jaxcnn.studies import ALEX_SMALL, TINY_FAST, Member, Study


def _members(scale):
  return [Member(f"d{d}_{'ramp' if ramp else 'noramp'}",
                 (f"optim.ema_decay={d}", f"optim.ema_ramp={str(ramp).lower()}"))
          for d in (0.99, 0.999, 0.9999) for ramp in (True, False)]


STUDY = Study(
    "ema",
    question="Raw against EMA test accuracy across training for several "
             "decays, with and without the (1+t)/(10+t) ramp.",
    paper="TF ExponentialMovingAverage(num_updates=step); the TF CIFAR-10 "
          "tutorial evaluates EMA 0.9999 weights.",
    base="alexnet", members=_members,
    scale_overrides={"small": ALEX_SMALL, "full": ALEX_SMALL,
                     "tiny": TINY_FAST},
    epochs={"small": 6, "full": 30}, extras=("ema",),
    notes="The EMA does not feed back into training: with the same seed "
          "every member trains the same raw weights (the raw column must "
          "agree across members, which checks determinism); only the EMA "
          "column differs.")
