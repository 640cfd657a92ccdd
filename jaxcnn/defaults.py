"""Every config field with its default. Experiments start from `base_config()`.

Durations are named `*_steps` or `*_epochs`; a schedule given in epochs is
turned into steps with the run's steps per epoch.
"""
from jaxcnn.config import Config
from jaxcnn.groups import group


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
      # Training images (after train_limit) held out as a validation split,
      # never trained on: the same number of each class, drawn with a fixed
      # seed (every run seed holds out the same images); evaluated beside
      # the test split, and what studies choose on and the best checkpoint
      # is picked by. 0: no validation split. E.g. 5000 for CIFAR-10.
      validation_size=0,
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
      # Filled in from the data when training starts, like the channel
      # statistics: the number of training images (after train_limit) and
      # their shape (H, W, C). The saved config holds them, so eval and
      # inspect rebuild the state and its schedule without any data. Given
      # by hand, they must match the data. train_size counts the images
      # trained on: without the validation split.
      train_size=0,
      image_shape=(),
      # Filled in from the data too: the name of each class, in label order
      # (TFDS's label names, a folder's class folders), so a workdir names
      # what it predicts (python -m jaxcnn.predict) without its data.
      class_names=(),
      random_crop=True,  # Random 32x32 crop of the image padded by crop_padding.
      crop_padding=4,
      # How the crop pads: 'zeros' | 'reflect' (mirror the border pixels, as
      # airbench's translation does).
      crop_pad_mode="zeros",
      random_flip=True,  # Horizontal flips (see flip_mode).
      # 'random': each example flipped with probability 1/2 at every step.
      # 'alternate': each image gets one random flip for the whole run, and
      # on every odd epoch all images are flipped on top of it, so an image
      # is seen both ways in any two consecutive epochs (airbench).
      flip_mode="random",
      # Brightness and contrast jitter of the normalized image (hiverge's
      # cifar10_speedrun: 0.1399 and 0.1308): each training example, at each
      # step, becomes (x + u) * (1 + v) with u ~ U(-brightness, brightness)
      # and v ~ U(-contrast, contrast) drawn per example. 0: off.
      jitter_brightness=0.0,
      jitter_contrast=0.0,
      # Cheaper early steps: the first small_crop_fraction of the training
      # steps (rounded) train on small_crop_size x small_crop_size images,
      # the rest and every evaluation on whole images. The model must accept
      # both sides with the same parameters (speednet: any side from 9; the
      # AlexNet-like net: none). 0: off.
      small_crop_size=0,
      small_crop_fraction=0.0,
      # An earlier stage of smaller crops still (progressive resizing in
      # three stages): the first first_crop_fraction of the training steps
      # (rounded; at most small_crop_fraction) train on first_crop_size
      # images (below small_crop_size), then the steps up to
      # small_crop_fraction on small_crop_size, then whole images. Needs the
      # small crops on. 0: off.
      first_crop_size=0,
      first_crop_fraction=0.0,
      # How those images are made from each step's usual crop (same
      # translations and flips): 'center', its middle window (less border,
      # objects at their test scale); 'resize', the whole of it scaled down
      # (antialiased linear interpolation of the normalized image: all of
      # the picture, objects smaller than at test).
      small_crop_mode="center",
      # Loss-based data pruning: from epoch prune_from_epochs on (rounded up
      # to a whole epoch), each epoch trains only on the (1 - prune_fraction)
      # of the training images whose loss was highest when each was last
      # trained on (never-trained images first), in a fresh seeded order;
      # the rest sit that epoch out. Such an epoch is the whole batches of
      # the kept images, so it is shorter; train.num_epochs still counts
      # whole-set epochs of steps (num_epochs * train_size // batch_size),
      # as do every other `*_epochs` field. 0: off.
      prune_fraction=0.0,
      prune_from_epochs=1.0,
  )

  # --- Model ----------------------------------------------------------------
  c.model = Config(
      # A registered model (jaxcnn/models/__init__.py REGISTRY): 'vgg' |
      # 'alexnet' | 'speednet' | 'tiny' (tests only).
      name="vgg",
      width=1.0,  # Channel multiplier (0.25 gives a CPU-sized VGG).
      activation="relu",  # relu | leaky_relu | elu | tanh | sigmoid | gelu
      norm="batchnorm",  # batchnorm | lrn | none (lrn: alexnet and tiny)
      dropout=0.5,  # Dropout rate before each hidden fully-connected layer.
      num_classes=10,
      dtype="float32",  # Compute dtype: float32 | bfloat16 (params stay fp32).
      conv_impl="auto",  # auto | xla | shifted (see jaxcnn/models/layers.py)
      # BatchNorm (every model): weight of the old running statistics in
      # each update (Flax's convention; PyTorch's momentum is 1 minus this),
      # and whether it learns a scale (False: only its bias is trained).
      bn_momentum=0.9,
      bn_scale=True,
  )
  # One section per registered model with fields of its own, named after
  # it, its defaults and their meaning in the model's file: model.vgg
  # (depth, block: jaxcnn/models/vgg.py), model.speednet (widths,
  # logit_scale, head_init_std, whiten, whiten_images:
  # jaxcnn/models/speednet.py), model.alexnet (its LRN constants:
  # jaxcnn/models/alexnet.py). Only the section of model.name is read.
  from jaxcnn.models import own_config_defaults  # It imports this module.
  for name, fields in own_config_defaults().items():
    c.model[name] = Config(**fields)

  # --- Optimizer --------------------------------------------------------------
  c.optim = Config(
      # Parameter groups (jaxcnn/groups.py): an ordered tuple, first match
      # wins, each parameter trained by the first group whose `match` regex
      # is found in its '/'-joined path ('conv1/kernel'); the last is by
      # convention the catch-all '.*'. Each group has name, match,
      # optimizer (sgd|momentum|nesterov|adam|adamw|rmsprop|adagrad|muon),
      # lr (peak), units ('step' | 'per_1024': airbench's decoupled units,
      # momentum/nesterov only), weight_decay, weight_decay_mode ('l2': wd * w
      # added to the gradient, the TF code's L2 loss; 'decoupled': lr_t * wd
      # * w subtracted from the weights), l1, frozen_from_epochs (None: never;
      # 0: never updated; x: frozen after x epochs), schedule (None: the
      # run's, below; or a Config of schedule fields laid over the run's),
      # and exactly its optimizer's options (momentum/nesterov: momentum;
      # adam/adamw: b1, b2, eps; rmsprop: decay, momentum, eps; adagrad: eps;
      # muon, airbench94_muon's form: momentum, ns_steps, eps, normalize,
      # normalize_every and normalize_every_rise: hiverge's rescaling
      # intervals, every + int(rise * step / steps), 1 and 0: every step).
      # Every parameter must be matched, every group must match one; a muon
      # group's parameters must be 2-D or 4-D.
      # Write them with jaxcnn.groups.group(name, match, optimizer, lr, ...).
      # Command line: --set optim.groups.<index or name>.<field>=value, or
      # optim.groups.*.<field>=value for every group (a group's schedule:
      # optim.groups.<g>.schedule.<field>, or schedule={'length_epochs': 3.0}
      # when it has none); setting `optimizer` gives the group that
      # optimizer's options (those both have keep their values);
      # optim.groups=[{...}, ...] replaces them all. Configs saved before
      # the groups are translated (jaxcnn/legacy.py). Default: momentum 0.9
      # at 0.05, L2 5e-4 on the kernels.
      groups=(
          group("kernel", r"kernel", "momentum", 0.05, weight_decay=5e-4),
          group("rest", r".*", "momentum", 0.05),
      ),
      # constant | exponential | step | inverse_time | cosine | triangular
      schedule="step",
      decay_epochs=25.0,  # exponential / inverse_time: period of decay.
      decay_rate=0.5,  # exponential: factor per period; inverse_time: k.
      staircase=True,  # exponential / inverse_time: decay in whole periods.
      step_boundaries_epochs=(),  # step: epochs where lr is multiplied ...
      step_factor=0.1,  # ... by this factor.
      cosine_final_fraction=0.0,  # cosine: final lr as a fraction of peak.
      # triangular: linear from triangle_start * peak at step 0 up to the peak
      # at triangle_peak * total steps, then linear down to triangle_end *
      # peak at the last step (fractions of the peak / of the run).
      triangle_start=0.2,
      triangle_peak=0.23,
      triangle_end=0.07,
      # cosine / triangular: the schedule's length in epochs (0: the run's);
      # after it the rate stays at its final value. For a group's own
      # schedule that ends early (airbench94_muon's whitening bias).
      length_epochs=0.0,
      warmup_epochs=0.0,  # Linear warmup from 0 to the peak before the schedule.
      # Parameters frozen late in training, whatever their group: pairs
      # (regex, epochs), each parameter whose path the regex is found in
      # gets no update from that many epochs on (the earliest of its
      # pairs', and of its group's frozen_from_epochs). With a model's stem
      # and first blocks all frozen (speednet: '^group1/', then
      # '^group2/'), the train step skips their backward pass: e.g.
      # --set 'optim.freeze=[["^group1/", 6.0]]' (FreezeOut, Brock et al.
      # 2017, arXiv 1706.04983). Each regex must match some parameter.
      freeze=(),
      ema_decay=0.9999,  # EMA of parameters (and BatchNorm statistics).
      # True: TF ExponentialMovingAverage(num_updates=step) semantics,
      # decay_t = min(decay, (1 + t) / (10 + t)).
      ema_ramp=True,
      # Lookahead (0: off): every lookahead_every_steps steps after the first
      # lookahead_start_epochs, the slow copy of the weights and BatchNorm
      # statistics moves to rho * slow + (1 - rho) * live and is written back
      # into the live ones; rho = lookahead_decay * (step / total) ** 3; at
      # every epoch end and at the last step the live weights become the slow
      # ones (airbench). Independent of the EMA above.
      lookahead_every_steps=0,
      lookahead_decay=0.95 ** 5,
      lookahead_start_epochs=0.0,
  )

  # --- Training loop ----------------------------------------------------------
  c.train = Config(
      batch_size=128,  # Global batch, split evenly over the devices.
      num_epochs=300,
      num_steps=0,  # If > 0, train for this many steps instead of num_epochs.
      # If > 0: training ends early at the first log step whose training
      # error (1 - the accuracy of the training batches since the previous
      # log, as logged) is at most this, e.g. 0.25 (the AlexNet paper's
      # figure 1); num_epochs / num_steps is then the cap. The run is then
      # complete: its final checkpoint, evaluation and a 'target' record in
      # metrics.jsonl are at that step, and running it again trains nothing.
      stop_at_train_error=0.0,
      label_smoothing=0.0,  # Weight of the uniform distribution in the targets.
      num_devices=0,  # Local devices to use (0: all).
      steps_per_dispatch=1,  # Train steps fused per call (lax.scan).
      log_every_steps=100,
      eval_every_epochs=5,  # 0: only at the end.
      eval_batch_size=1000,  # Global eval batch.
      # Test-time augmentation of the final evaluation: 'none' | 'mirror'
      # (mean logits of the image and its mirror) | 'mirror_translate' (also
      # of both shifted by one pixel up-left and down-right, reflect padded;
      # half the weight on the unshifted pair, airbench's) |
      # 'mirror_translate_mean' (the same six views weighted alike, hiverge's).
      final_tta="none",
      # The fraction of the test images that get final_tta: the least
      # confident ones (smallest largest softmax probability under the plain
      # pass; hiverge's cifar10_speedrun augments 0.25), the rest keep their
      # plain logits. 1: all.
      final_tta_fraction=1.0,
      # Also give the final evaluation with final_tta to the ensemble of the
      # raw and EMA weights (the mean of their predicted probabilities; two
      # forward passes an image), logged beside them as
      # test_accuracy_ensemble; `python -m jaxcnn.eval --weights ensemble`
      # evaluates it afterwards.
      final_tta_ensemble=False,
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
  from jaxcnn import groups as groups_lib, legacy
  out = Config.from_dict(merge(base_config().to_dict(),
                               legacy.upgrade(config.to_dict())))
  out.optim.groups = tuple(groups_lib.complete(g) for g in out.optim.groups)
  return out
