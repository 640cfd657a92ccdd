"""The four-layer net of the AlexNet paper's figure 1 (jaxcnn/models/
convnet4.py) with the figure's set-up: no augmentation, no weight decay,
no dropout, no normalisation layer.

SGD with momentum 0.9 at a constant rate, batch 128 (cuda-convnet's
examples: momentum 0.9, minibatches of 128), inputs centred and scaled per
channel. The rate is the one knob the figure tunes ("the learning rates for
each network chosen independently to make training as fast as possible"):
the `activations` study at `--scale full` sweeps it per activation.
`train.stop_at_train_error=0.25` ends a run at the figure's 25% training
error.

    python -m jaxcnn.train --exp convnet4 --set model.activation=tanh
"""
from jaxcnn.defaults import base_config
from jaxcnn.groups import group


def get_config():
  c = base_config()
  c.model.name = "convnet4"
  c.model.norm = "none"
  c.model.dropout = 0.0
  c.data.random_crop = False
  c.data.random_flip = False
  c.optim.groups = (group("all", r".*", "momentum", 0.01),)
  c.optim.schedule = "constant"
  c.train.batch_size = 128
  c.train.num_epochs = 30
  c.train.eval_every_epochs = 5
  return c
