"""Two stacked 3x3 convs against one 5x5 conv per block of VGG-13."""
from jaxcnn.studies import Member, Study


def _members(scale):
  # VGG-13 has exactly two 3x3 convs in each of its five blocks; the other
  # member replaces each pair by one 5x5 conv (same receptive field).
  return [Member("two_3x3", ("model.vgg.depth=13",)),
          Member("one_5x5", ("model.vgg.depth=13", "model.vgg.block=5x5"))]


STUDY = Study(
    "receptive_field",
    question="Two stacked 3x3 convs against one 5x5 conv per block: "
             "parameters, FLOPs, accuracy.",
    paper="VGG paper (Simonyan & Zisserman 2014), section 2.3: two 3x3 "
          "convs see 5x5 with 18C^2 instead of 25C^2 weights and an extra "
          "non-linearity.",
    base="vgg", members=_members,
    scale_overrides={"small": ("model.width=0.25", "model.dropout=0.0",
                               "optim.schedule=constant"),
                     "full": ("optim.schedule=cosine",)},
    epochs={"small": 15, "full": 30}, extras=("flops",))
