"""VGG-16 with BatchNorm on CIFAR-10: the seed recipe.

Batch 128, momentum 0.9, lr 0.05 halved every 25 epochs, weight decay 5e-4
(L2 on all conv/fc kernels), dropout 0.5, EMA decay 0.9999, 300 epochs,
random crop (pad 4) + flip, per-channel mean/std normalization.

    python -m jaxcnn.train --exp vgg

Reached: see README "Results" (a full 300-epoch run needs a GPU; reference:
93.86% for this recipe in chengyangfu/pytorch-vgg-cifar10).
CPU-sized variant: --set model.width=0.25 --set train.num_epochs=2.
"""
from jaxcnn.defaults import base_config
from jaxcnn.groups import group


def get_config():
  c = base_config()
  c.model.name = "vgg"
  c.model.vgg.depth = 16
  c.model.dropout = 0.5
  c.optim.groups = (
      # L2 weight decay on the conv and fully-connected kernels only.
      group("kernel", r"kernel", "momentum", 0.05, momentum=0.9,
            weight_decay=5e-4),
      group("rest", r".*", "momentum", 0.05, momentum=0.9),
  )
  c.optim.schedule = "exponential"  # Staircase x0.5 every 25 epochs.
  c.optim.decay_rate = 0.5
  c.optim.decay_epochs = 25.0
  c.optim.staircase = True
  c.optim.ema_decay = 0.9999
  c.train.batch_size = 128
  c.train.num_epochs = 300
  return c
