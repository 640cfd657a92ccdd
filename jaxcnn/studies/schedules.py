"""Learning-rate schedules on the same budget."""
from jaxcnn.studies import TINY_FAST, Member, Study

MOMENTUM = ("optim.groups.*.optimizer=momentum", "optim.groups.*.lr=0.02")


def _members(scale):
  e = scale.epochs
  return [
      Member("constant", ("optim.schedule=constant",)),
      Member("step", ("optim.schedule=step",
                      f"optim.step_boundaries_epochs=({e * 0.5},{e * 0.75})",
                      "optim.step_factor=0.1")),
      # Ends at a tenth of the peak, like the step schedule.
      Member("exponential", ("optim.schedule=exponential",
                             "optim.staircase=false", "optim.decay_rate=0.1",
                             f"optim.decay_epochs={float(e)}")),
      # 1/(1 + 9 t/T): also a tenth at the end.
      Member("inverse_time", ("optim.schedule=inverse_time",
                              "optim.staircase=false", "optim.decay_rate=9.0",
                              f"optim.decay_epochs={float(e)}")),
      Member("cosine_warmup", ("optim.schedule=cosine",
                               f"optim.warmup_epochs={max(e / 10, 0.5)}")),
  ]


STUDY = Study(
    "schedules",
    question="Constant, step, exponential, 1/t and cosine-with-warmup "
             "learning rates on the same budget.",
    paper="Loshchilov & Hutter, SGDR (2017): cosine annealing; Goyal et "
          "al. (2017): warmup.",
    base="alexnet", members=_members,
    scale_overrides={"small": MOMENTUM, "full": MOMENTUM, "tiny": TINY_FAST},
    epochs={"small": 6, "full": 30})
