"""VGG-16-BN on a short budget: 30 epochs, cosine schedule with 1 warmup epoch,
EMA decay 0.999 (0.9999 averages over ~10k steps, a third of this run).
Otherwise the seed recipe of experiments/vgg.py.

    python -m jaxcnn.train --exp vgg_short --set model.dtype=bfloat16

Reached on one H200 (bf16, jax 0.11.2; CIFAR-10 test, JPEG copy, 5k images):
88.58% raw, 88.78% EMA after 30 epochs, about 30 s of training after a 23 s
compile (benchmarks/gpu_run.sh; docs/gpu/h200_run.log).
"""
from jaxcnn.config import load_experiment


def get_config():
  c = load_experiment("vgg")
  c.train.num_epochs = 30
  c.optim.schedule = "cosine"
  c.optim.warmup_epochs = 1.0
  c.optim.ema_decay = 0.999
  c.train.eval_every_epochs = 5
  c.train.steps_per_dispatch = 10
  c.train.log_every_steps = 390
  c.train.checkpoint_every_steps = 3900
  return c
