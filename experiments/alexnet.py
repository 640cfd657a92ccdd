"""The AlexNet-like model of the TensorFlow CIFAR-10 tutorial, with its recipe.

conv5x5-64, max-pool 3/2, LRN, conv5x5-64, LRN, max-pool 3/2, fc384, fc192.
Plain SGD at lr 0.1, decayed x0.1 every 350 epochs (staircase), L2 weight
decay 0.004 on fc384 and fc192 only, EMA 0.9999 of the weights for eval,
per-image standardization, batch 128, 100k steps (256 epochs).
Unlike the tutorial we train on the full 32x32 image (random crop from the
4-pixel padded image, flip) instead of 24x24 crops with colour jitter.

    python -m jaxcnn.train --exp alexnet

Reference: about 86% (EMA weights) after 100k steps on one K40 (tutorial).
Reached here (CIFAR-10 test, JPEG copy, 5k): 58.36% raw, 63.74% EMA after 3
epochs on the 2-core CPU (20 min, with other jobs running); the full 100k
steps have not been run.
"""
from jaxcnn.defaults import base_config
from jaxcnn.groups import group


def get_config():
  c = base_config()
  c.model.name = "alexnet"
  c.model.norm = "lrn"
  c.model.dropout = 0.0
  c.data.normalization = "image"
  c.optim.groups = (
      # L2 weight decay 0.004 on the two hidden fully-connected kernels only.
      group("fc_kernels", r"^(fc384|fc192)/kernel$", "sgd", 0.1,
            weight_decay=0.004),
      group("rest", r".*", "sgd", 0.1),
  )
  c.optim.schedule = "exponential"
  c.optim.decay_rate = 0.1
  c.optim.decay_epochs = 350.0
  c.optim.staircase = True
  c.optim.ema_decay = 0.9999
  c.train.batch_size = 128
  c.train.num_steps = 100_000
  c.train.eval_every_epochs = 10
  return c
