"""A seconds-long run for the integration tests and smoke checks: the tiny
model on synthetic data, on the CPU.

    python -m jaxcnn.train --exp test --workdir /tmp/jaxcnn_test
"""
from jaxcnn.defaults import base_config
from jaxcnn.groups import group


def get_config():
  c = base_config()
  c.data.source = "synthetic"
  c.data.synthetic_train_size = 512
  c.data.synthetic_test_size = 200
  c.model.name = "tiny"
  c.model.dropout = 0.1
  c.optim.groups = (
      group("kernel", r"kernel", "momentum", 0.05, weight_decay=5e-4),
      group("rest", r".*", "momentum", 0.05),
  )
  c.optim.schedule = "cosine"
  c.optim.warmup_epochs = 0.25
  c.optim.ema_decay = 0.99
  c.train.batch_size = 32
  c.train.num_epochs = 3
  c.train.log_every_steps = 8
  c.train.eval_every_epochs = 1
  c.train.eval_batch_size = 64
  c.train.checkpoint_every_steps = 16
  c.train.progress_bar = False
  return c
