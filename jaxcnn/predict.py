"""Classify image files with a trained workdir:
`python -m jaxcnn.predict --workdir runs/vgg cat.jpg dog.png`.

Prints the five most probable classes of each image (the softmax of the
model's logits), named as the run's data names them. Images of any size and
of any format PIL reads are fitted to the model's input as data.image_shape
of the saved config says: turned upright (EXIF orientation), converted to
RGB, the centre cropped to the input's aspect ratio and resized (bicubic),
then normalized exactly as training normalized its images (data.normalization
with the run's channel statistics). An image already of the input's size is
used pixel for pixel.

The model and config come from the checkpoint alone (see jaxcnn.restore): no
data is read, and nothing is written. The class names are the saved config's
data.class_names; for a workdir saved before the config held them, CIFAR-10's
for tfds:cifar10, the class folders of a folder: source that is still there,
else the label numbers.
"""
from __future__ import annotations

import argparse
import pathlib
from typing import Sequence

import numpy as np

from jaxcnn import cli

TOP_K = 5
# The label names of TFDS's cifar10, for workdirs saved before the config
# held data.class_names.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                   "frog", "horse", "ship", "truck")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m jaxcnn.predict", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("images", nargs="+", metavar="IMAGE",
                 help="image files (jpg, png, ... anything PIL reads)")
  p.add_argument("--workdir", required=True,
                 help="a workdir written by python -m jaxcnn.train")
  p.add_argument("--step", type=int, default=None,
                 help="checkpoint step to use (default: the latest)")
  p.add_argument("--weights", choices=("raw", "ema"), default="ema",
                 help="ema (the default): the moving average of the "
                 "weights, as the run's EMA accuracy is measured; raw: the "
                 "trained weights as they are")
  p.add_argument("--json", action="store_true",
                 help="print one JSON object instead of text")
  return p.parse_args(argv)


def class_names_of(config) -> tuple[str, ...]:
  """The name of each label the model predicts (see the module docstring)."""
  count = int(config.model.num_classes)
  names = tuple(str(n) for n in (config.data.get("class_names") or ()))
  if len(names) == count:
    return names
  source = str(config.data.get("source", ""))
  if source == "tfds:cifar10" and count == len(CIFAR10_CLASSES):
    return CIFAR10_CLASSES
  kind, _, arg = source.partition(":")
  if kind == "folder" and arg:
    from jaxcnn.data import DataError, folder
    train_dir = pathlib.Path(arg) / "train"
    try:
      found = folder._class_names(train_dir) if train_dir.is_dir() else ()
    except DataError:
      found = ()
    if len(found) == count:
      return tuple(found)
  if source == "synthetic":  # Named as jaxcnn.data.synthetic names them.
    return tuple(f"class{i}" for i in range(count))
  return tuple(str(i) for i in range(count))


def read_image(path: str):
  """The decoded image (a PIL image, RGB, upright); DataError with one line
  when `path` is missing or no image."""
  from PIL import Image, ImageOps, UnidentifiedImageError
  from jaxcnn.data import DataError
  file = pathlib.Path(path)
  if not file.exists():
    raise DataError(f"image {path} does not exist")
  if not file.is_file():
    raise DataError(f"image {path} is not a file")
  try:
    with Image.open(file) as image:
      image.load()
      upright = ImageOps.exif_transpose(image)
      return upright.convert("RGB")
  except UnidentifiedImageError:
    raise DataError(f"{path} is not an image PIL can read") from None
  except (OSError, ValueError, SyntaxError) as e:  # Truncated or corrupt.
    raise DataError(f"{path} is not a readable image: {e}") from None


def fit_image(image, height: int, width: int) -> np.ndarray:
  """uint8 [height, width, 3]: the centre of `image` at the target's aspect
  ratio, resized (bicubic); unchanged when it has the target's size."""
  from PIL import Image
  w, h = image.size
  if (w, h) != (width, height):
    # The largest centred box of the target's aspect ratio.
    if w * height > h * width:
      crop_w, crop_h = max(1, round(h * width / height)), h
    else:
      crop_w, crop_h = w, max(1, round(w * height / width))
    left, top = (w - crop_w) // 2, (h - crop_h) // 2
    image = image.crop((left, top, left + crop_w, top + crop_h))
    image = image.resize((width, height), Image.Resampling.BICUBIC)
  return np.asarray(image, np.uint8)


def predict_files(workdir, paths: Sequence[str], *, step: int | None = None,
                  weights: str = "ema") -> dict:
  """What `python -m jaxcnn.predict` prints, as plain data:

    {workdir, step, weights, model, image_shape, class_names,
     predictions: [{image, size: [w, h], top: [{label, class, probability}]}]}

  `top` holds the TOP_K (at most the class count) most probable classes,
  most probable first."""
  import jax
  import jax.numpy as jnp
  from jaxcnn import augment, evaluation, restore
  from jaxcnn import state as state_lib
  from jaxcnn.models import create_model
  images = [read_image(p) for p in paths]  # Bad files fail before restoring.
  with restore.CheckpointReader(workdir) as reader:
    config, state, step = reader.restore(step)
  shape = tuple(config.data.get("image_shape") or restore.LEGACY_IMAGE_SHAPE)
  height, width = int(shape[0]), int(shape[1])
  batch = np.stack([fit_image(im, height, width) for im in images])
  mean = np.asarray(config.data.channel_mean, np.float32)
  std = np.asarray(config.data.channel_std, np.float32)
  model = create_model(config.model)
  variables = state_lib.variables_of(state, weights)

  @jax.jit
  def probabilities(variables, x_u8):
    x = augment.normalize(x_u8, config.data.normalization, mean, std)
    logits = model.apply(variables, x, train=False).astype(jnp.float32)
    return jax.nn.softmax(logits, axis=-1)

  chunk = max(1, int(config.train.eval_batch_size))
  probs = np.concatenate([
      np.asarray(probabilities(variables, jnp.asarray(batch[i:i + chunk])))
      for i in range(0, len(batch), chunk)])
  names = class_names_of(config)
  k = min(TOP_K, probs.shape[1])
  predictions = []
  for path, image, p in zip(paths, images, probs):
    order = np.argsort(-p, kind="stable")[:k]
    predictions.append({
        "image": str(path), "size": list(image.size),
        "top": [{"label": int(i), "class": names[i],
                 "probability": float(p[i])} for i in order]})
  return {"workdir": str(workdir), "step": int(step), "weights": weights,
          "model": evaluation.model_text(config),
          "image_shape": [height, width, int(shape[2])],
          "class_names": list(names), "predictions": predictions}


def format_report(report: dict) -> str:
  height, width = report["image_shape"][:2]
  lines = [f"workdir {report['workdir']}, step {report['step']}, "
           f"{report['weights']} weights: {report['model']}; images fitted "
           f"to {width}x{height}"]
  for pred in report["predictions"]:
    w, h = pred["size"]
    lines += ["", f"{pred['image']} ({w}x{h})"]
    width = max(len(t["class"]) for t in pred["top"])
    lines += [f"  {rank}. {t['class']:<{width}}  {100 * t['probability']:6.2f}%"
              for rank, t in enumerate(pred["top"], 1)]
  return "\n".join(lines)


def main(argv=None) -> int:
  args = parse_args(argv)
  from jaxcnn.models import cpu_kernels
  cpu_kernels.prefer_eigen_convolutions()  # Before XLA starts.
  report = predict_files(args.workdir, args.images, step=args.step,
                         weights=args.weights)
  cli.print_report(report, [], args.json, format_report)
  return 0


if __name__ == "__main__":
  cli.run_main(main, hard_exit=True)
