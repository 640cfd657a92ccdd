"""Every config field with its default. Experiments start from `base_config()`.

Durations are named `*_steps` or `*_epochs`; a schedule given in epochs is
turned into steps with the run's steps per epoch.
"""
from jaxcnn.config import Config


def base_config() -> Config:
  c = Config()
  c.seed = 0  # Seeds init, data order, augmentation and dropout.

  # --- Data -----------------------------------------------------------------
  c.data = Config(
      # 'tfds:cifar10' | 'folder:PATH' (PATH/{train,test}/<class>/*.jpg) |
      # 'synthetic' (seeded, learnable; for smoke runs and tests).
      source="tfds:cifar10",
      data_dir=None,  # TFDS data_dir; None means TFDS's default.
      train_limit=0,  # Use only the first N training images (0: all).
      test_limit=0,  # Use only the first N test images (0: all).
      synthetic_train_size=5000,
      synthetic_test_size=1000,
      # 'channel' (dataset per-channel mean/std) | 'image' (per-image
      # standardization, as tf.image.per_image_standardization) | 'none'
      # (pixels scaled to [0, 1], not centred).
      normalization="channel",
      # Per-channel mean and std in [0, 1] pixel units; () means computed from
      # the training set (the saved config holds the computed values).
      channel_mean=(),
      channel_std=(),
      random_crop=True,  # Random 32x32 crop of the image padded by crop_padding.
      crop_padding=4,
      random_flip=True,  # Horizontal flip with probability 1/2.
  )

  # --- Model ----------------------------------------------------------------
  c.model = Config(
      name="vgg",  # 'vgg' | 'alexnet' | 'tiny' (tests only)
      depth=16,  # VGG depth: 11 | 13 | 16 | 19.
      # VGG block: '3x3' | '5x5' (each pair of 3x3 convs in a block becomes
      # one 5x5 conv; see jaxcnn/models/vgg.py).
      vgg_block="3x3",
      width=1.0,  # Channel multiplier (0.25 gives a CPU-sized VGG).
      activation="relu",  # relu | leaky_relu | elu | tanh | sigmoid | gelu
      norm="batchnorm",  # batchnorm | lrn | none (lrn: AlexNet-like only)
      dropout=0.5,  # Dropout rate before each hidden fully-connected layer.
      num_classes=10,
      dtype="float32",  # Compute dtype: float32 | bfloat16 (params stay fp32).
      conv_impl="auto",  # auto | xla | shifted (see jaxcnn/models/layers.py)
  )

  # --- Optimizer --------------------------------------------------------------
  c.optim = Config(
      optimizer="momentum",  # sgd|momentum|nesterov|adam|adamw|rmsprop|adagrad
      learning_rate=0.05,  # Peak learning rate.
      momentum=0.9,  # momentum / nesterov; also rmsprop's momentum.
      b1=0.9,  # adam / adamw
      b2=0.999,
      eps=1e-8,
      rmsprop_decay=0.9,
      weight_decay=5e-4,
      # 'l2': wd * w added to the gradient (the L2 loss term of the TF code);
      # 'decoupled': lr * wd * w subtracted from the weights (AdamW style).
      weight_decay_mode="l2",
      # Regex over parameter paths ('conv1/kernel') that weight decay and L1
      # apply to.
      weight_decay_filter=r"kernel",
      l1=0.0,  # L1 strength: l1 * sign(w) added to the gradient.
      # constant | exponential | step | inverse_time | cosine
      schedule="step",
      decay_epochs=25.0,  # exponential / inverse_time: period of decay.
      decay_rate=0.5,  # exponential: factor per period; inverse_time: k.
      staircase=True,  # exponential / inverse_time: decay in whole periods.
      step_boundaries_epochs=(),  # step: epochs where lr is multiplied ...
      step_factor=0.1,  # ... by this factor.
      cosine_final_fraction=0.0,  # cosine: final lr as a fraction of peak.
      warmup_epochs=0.0,  # Linear warmup from 0 to the peak before the schedule.
      ema_decay=0.9999,  # EMA of parameters (and BatchNorm statistics).
      # True: TF ExponentialMovingAverage(num_updates=step) semantics,
      # decay_t = min(decay, (1 + t) / (10 + t)).
      ema_ramp=True,
  )

  # --- Training loop ----------------------------------------------------------
  c.train = Config(
      batch_size=128,  # Global batch, split evenly over the devices.
      num_epochs=300,
      num_steps=0,  # If > 0, train for this many steps instead of num_epochs.
      num_devices=0,  # Local devices to use (0: all).
      steps_per_dispatch=1,  # Train steps fused per call (lax.scan).
      log_every_steps=100,
      eval_every_epochs=5,  # 0: only at the end.
      eval_batch_size=1000,  # Global eval batch.
      checkpoint_every_steps=2000,
      keep_checkpoints=3,
      progress_bar=True,
      # At each log step, also write per-layer statistics (dead ReLUs,
      # saturated units, activation sparsity, gradient norms) of a fixed probe
      # batch to metrics.jsonl (kind 'stats'); see jaxcnn/stats.py.
      collect_stats=False,
  )
  return c


def with_defaults(config: Config) -> Config:
  """The saved config laid over today's defaults: a field added to jaxcnn
  after the run was saved takes its default, which is what the code did
  before the field existed."""
  def merge(base: dict, saved: dict) -> dict:
    out = dict(base)
    for key, value in saved.items():
      if isinstance(value, dict) and isinstance(base.get(key), dict):
        out[key] = merge(base[key], value)
      else:
        out[key] = value
    return out
  return Config.from_dict(merge(base_config().to_dict(), config.to_dict()))
