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
                     # All 50,000 images (nothing is chosen, so no
                     # validation split), the VGG recipe (crop and flip,
                     # dropout 0.5, L2 5e-4, momentum 0.9 at 0.05, EMA) at
                     # quarter width, cosine over 10 epochs. Measured on the
                     # 2-core AMD EPYC without AVX-512: 0.27 s a step at
                     # batch 128, about 117 s an epoch with its evaluation,
                     # so a member takes about 20 minutes there and 2
                     # members x 2 seeds about 80 (15 epochs did not fit a
                     # session beside the rest of its work).
                     "full": ("data.validation_size=0", "model.width=0.25",
                              "optim.schedule=cosine")},
    epochs={"small": 15, "full": 10}, extras=("flops",))
