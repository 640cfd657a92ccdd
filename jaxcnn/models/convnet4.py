"""The four-layer CIFAR-10 net of the AlexNet paper's figure 1: the
convolutional net of Krizhevsky's cuda-convnet examples, three 5x5
convolutions and a 10-way fully connected layer.

  conv1 5x5 32 -> act -> maxpool 3/2 -> conv2 5x5 32 -> act -> avgpool 3/2
  -> conv3 5x5 64 -> act -> avgpool 3/2 -> [fc64 -> act] -> logits (10)

The shapes are those of cuda-convnet's example `layers-80sec.cfg` ("26%
error on CIFAR-10 in 80 seconds"): convolutions padded 2 (SAME), pooling
windows 3 at stride 2 that cover the image (32 -> 16 -> 8 -> 4, what SAME
padding gives; the average counts only the pixels inside), the first pool a
max and the other two averages. That file also has a 64-unit hidden layer
before the logits (five weight layers); the paper calls its net four-layer,
so the default leaves it out (`model.convnet4.hidden=0`) and
`model.convnet4.hidden=64` puts it back.

No normalisation layer, no dropout: the figure's nets have "no
regularization of any kind". The activation is `model.activation`. The
initialisation is LeCun normal (variance 1/fan-in) for every layer, the same
for every activation, instead of the file's fixed stds (1e-4 for conv1,
0.01 for conv2/conv3): with them a saturating activation would start in its
linear range for some layers and not others.

Cost: 24.6 MFLOPs forward per image at 32x32 (4.9 in conv1, 13.1 in conv2,
6.6 in conv3); 89,578 parameters (with fc64: 145,578).
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from jaxcnn.models import layers
from jaxcnn.models.spec import ModelConfigError, ModelSpec, width_text

CONFIG = dict(
    hidden=0,  # Units of the hidden layer before the logits (0: none).
)


def avg_pool_3x3_s2(x):
  """3x3 stride-2 average pooling over the pixels inside the image (SAME)."""
  return nn.avg_pool(x, (3, 3), strides=(2, 2), padding="SAME",
                     count_include_pad=False)


class ConvNet4(layers.ModelBase):
  """`width` scales the 32/32/64 channels (and the hidden layer)."""
  activation: str = "relu"
  hidden: int = 0

  @nn.compact
  def __call__(self, x, train: bool):
    act = layers.ACTIVATIONS[self.activation]
    pools = (lambda y: layers.max_pool(y, 3, 2, "SAME"), avg_pool_3x3_s2,
             avg_pool_3x3_s2)
    for index, (channels, pool) in enumerate(zip((32, 32, 64), pools), 1):
      x = layers.Conv(layers.scaled(channels, self.width), 5,
                      dtype=self.dtype, name=f"conv{index}")(x)
      x = pool(act(x))
    x = x.reshape(x.shape[0], -1)
    if self.hidden:
      x = act(nn.Dense(layers.scaled(self.hidden, self.width),
                       dtype=self.dtype, name="fc1")(x))
    return nn.Dense(self.num_classes, dtype=jnp.float32, name="logits")(x)


def build(common, own: dict) -> ConvNet4:
  hidden = own["hidden"]
  if not (isinstance(hidden, int) and not isinstance(hidden, bool)
          and hidden >= 0):
    raise ModelConfigError(
        f"model.convnet4.hidden={hidden!r} must be an integer >= 0")
  if common.dropout:
    raise ModelConfigError(
        f"model.dropout={common.dropout!r}: convnet4 has no dropout (the "
        "figure's nets have no regularization); set model.dropout=0.0")
  return ConvNet4(activation=common.activation, hidden=hidden,
                  **common.module_kwargs)


def describe(m) -> str:
  hidden = m["convnet4"]["hidden"]
  return (f"convnet4{width_text(m)} ({m['activation']}"
          + (f", fc{hidden}" if hidden else "") + ")")


SPEC = ModelSpec(
    name="convnet4",
    summary="the four-layer cuda-convnet net of the AlexNet paper's figure 1",
    norms=("none",), config=CONFIG, build=build, describe=describe)
