"""The jaxcnn models and optimizer chain in PyTorch, for side-by-side timing.

Benchmark-only: nothing in jaxcnn imports this, and PyTorch is an optional
dependency (requirements-bench.txt). The layer lists, widths, BatchNorm and
dropout placement, head and pooling windows follow jaxcnn/models exactly, so
both frameworks do the same arithmetic per image; initialisation is torch's
default, which does not matter for timing.

  VGG:     3x3 convs (no bias before BN) -> BN -> ReLU, 2x2 max pools,
           dropout -> fc512 -> ReLU -> dropout -> fc512 -> ReLU -> fc10.
  AlexNet: conv5x5 -> ReLU -> maxpool 3/2 SAME -> LRN -> conv5x5 -> ReLU ->
           LRN -> maxpool 3/2 SAME -> fc384 -> fc192 -> fc10.
  SpeedNet: frozen 2x2 conv 3->24 (+ trainable bias) -> GELU, three groups of
           conv3x3 -> maxpool 2 -> BN (bias only) -> GELU -> conv3x3 -> BN ->
           GELU, maxpool 3, linear (no bias) x 1/9.

The optimizer mirrors jaxcnn.optim.make_optimizer for the two recipes: L2
weight decay added to the gradient of the parameters the config's filter
selects, SGD with or without momentum (optax's trace is torch's momentum
buffer without dampening), then an EMA of the parameters after every step,
because the jaxcnn step pays for that EMA too.
"""
from __future__ import annotations

import re

import torch
from torch import nn

# jaxcnn's own VGG layer lists, so both frameworks build the same nets.
from jaxcnn.models.vgg import LAYERS_BY_DEPTH, POOL


class VGG(nn.Module):

  def __init__(self, depth: int = 16, num_classes: int = 10,
               dropout: float = 0.5, batchnorm: bool = True):
    super().__init__()
    layers, channels = [], 3
    for item in LAYERS_BY_DEPTH[depth]:
      if item == POOL:
        layers.append(nn.MaxPool2d(2))
        continue
      layers.append(nn.Conv2d(channels, item, 3, padding=1,
                              bias=not batchnorm))
      if batchnorm:
        # torch's momentum is the weight of the NEW statistic: 0.1 here is
        # flax's momentum=0.9.
        layers.append(nn.BatchNorm2d(item, eps=1e-5, momentum=0.1))
      layers.append(nn.ReLU(inplace=True))
      channels = item
    self.features = nn.Sequential(*layers)
    self.head = nn.Sequential(
        nn.Dropout(dropout), nn.Linear(512, 512), nn.ReLU(inplace=True),
        nn.Dropout(dropout), nn.Linear(512, 512), nn.ReLU(inplace=True),
        nn.Linear(512, num_classes))

  def forward(self, x):
    return self.head(torch.flatten(self.features(x), 1))


class AlexNetLike(nn.Module):
  """TF SAME 3x3/2 max pooling on an even map pads one column on the right
  and bottom only: ceil_mode windows starting at 0 are exactly that."""

  def __init__(self, num_classes: int = 10, image_size: int = 32):
    super().__init__()
    # tf.nn.lrn's alpha multiplies the plain sum of squares; torch's
    # LocalResponseNorm divides it by the window size first, so it needs the
    # tf alpha times 2 * depth_radius + 1.
    radius, alpha_tf = 4, 0.001 / 9.0
    size = 2 * radius + 1
    lrn = lambda: nn.LocalResponseNorm(size, alpha=alpha_tf * size,
                                       beta=0.75, k=1.0)
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)
    self.conv1 = nn.Conv2d(3, 64, 5, padding=2)
    self.conv2 = nn.Conv2d(64, 64, 5, padding=2)
    self.pool1, self.norm1 = pool(), lrn()
    self.norm2, self.pool2 = lrn(), pool()
    flat = 64 * ((image_size + 3) // 4) ** 2
    self.fc384 = nn.Linear(flat, 384)
    self.fc192 = nn.Linear(384, 192)
    self.logits = nn.Linear(192, num_classes)

  def forward(self, x):
    x = self.norm1(self.pool1(torch.relu(self.conv1(x))))
    x = self.pool2(self.norm2(torch.relu(self.conv2(x))))
    x = torch.flatten(x, 1)
    x = torch.relu(self.fc384(x))
    x = torch.relu(self.fc192(x))
    return self.logits(x)


class SpeedNet(nn.Module):
  """jaxcnn/models/speednet.py in PyTorch (the airbench94 network)."""

  def __init__(self, widths=(64, 256, 256), num_classes: int = 10,
               bn_momentum: float = 0.4):
    super().__init__()
    self.whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
    self.whiten.weight.requires_grad = False  # Frozen, as in jaxcnn.

    def bn(c):
      # torch's momentum is the weight of the NEW statistic.
      norm = nn.BatchNorm2d(c, eps=1e-5, momentum=1 - bn_momentum)
      norm.weight.requires_grad = False  # No learned scale.
      return norm

    groups, cin = [], 24
    for c in widths:
      groups += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.MaxPool2d(2),
                 bn(c), nn.GELU(), nn.Conv2d(c, c, 3, padding=1, bias=False),
                 bn(c), nn.GELU()]
      cin = c
    self.body = nn.Sequential(nn.GELU(), *groups, nn.MaxPool2d(3))
    self.head = nn.Linear(cin, num_classes, bias=False)

  def forward(self, x):
    return self.head(torch.flatten(self.body(self.whiten(x)), 1)) / 9.0


def create(name: str, depth: int = 16, num_classes: int = 10,
           dropout: float = 0.5, widths=(64, 256, 256),
           bn_momentum: float = 0.9) -> nn.Module:
  if name == "vgg":
    return VGG(depth, num_classes, dropout)
  if name == "alexnet":
    return AlexNetLike(num_classes)
  if name == "speednet":
    return SpeedNet(widths, num_classes, bn_momentum)
  raise ValueError(f"no PyTorch version of model {name!r}")


def jax_style_path(module: nn.Module, torch_name: str) -> str:
  """'fc384.weight' -> 'fc384/kernel': the path jaxcnn's decay regex sees.
  VGG's layer names differ (features_3 vs conv1_2), but its default filter
  'kernel' reads only the last part, where a BatchNorm weight is 'scale'."""
  layer, _, kind = torch_name.rpartition(".")
  owner = module.get_submodule(layer)
  if kind == "weight":
    kind = "scale" if isinstance(owner, nn.BatchNorm2d) else "kernel"
  return f"{layer.replace('.', '_')}/{kind}"


class Optimizer:
  """L2 decay on filtered weights -> SGD(momentum) -> EMA of the params.

  The EMA uses TF's ramp, min(decay, (1 + t) / (10 + t)), as jaxcnn's does;
  the arithmetic is the same whatever t, so the ramp costs nothing extra.
  """

  def __init__(self, module: nn.Module, *, lr: float, momentum: float,
               weight_decay: float, decay_filter: str, ema_decay: float,
               nesterov: bool = False):
    regex = re.compile(decay_filter)
    decayed, plain = [], []
    for name, p in module.named_parameters():
      if not p.requires_grad:
        continue
      (decayed if regex.search(jax_style_path(module, name)) else plain).append(p)
    groups = [{"params": decayed, "weight_decay": weight_decay},
              {"params": plain, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    self.sgd = torch.optim.SGD(groups, lr=lr, momentum=momentum,
                               nesterov=nesterov, foreach=True)
    self.params = [p for p in module.parameters() if p.requires_grad]
    self.ema = [p.detach().clone() for p in self.params]
    self.ema_decay = ema_decay
    self.t = 0

  def zero_grad(self):
    self.sgd.zero_grad(set_to_none=True)

  @torch.no_grad()
  def step(self):
    self.sgd.step()
    self.t += 1
    d = min(self.ema_decay, (1 + self.t) / (10 + self.t))
    torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1 - d)
