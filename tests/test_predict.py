"""`jaxcnn.predict`: its probabilities are the model's on the images as
training preprocessed them, an image of another size is fitted to the
model's input, the class names come from the saved config (or, for older
workdirs, from the data source). One tiny run is shared by the module."""
import json

import jax
import numpy as np
import pytest
from PIL import Image

from jaxcnn import augment, cli, config as config_lib, predict, restore
from jaxcnn import state as state_lib
from jaxcnn import trainer
from jaxcnn.data import load_from_config
from jaxcnn.models import create_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir with checkpoints at steps 8 and 16 of the tiny test run."""
  workdir = str(tmp_path_factory.mktemp("predict") / "run")
  config = config_lib.apply_overrides(config_lib.load_experiment("test"), [
      "optim.groups.*.optimizer=adam", "optim.groups.*.lr=0.01",
      "train.num_steps=16", "train.checkpoint_every_steps=8",
      "train.eval_every_epochs=0"])
  trainer.train_and_evaluate(config, workdir)
  return workdir


def run_predict(argv, capsys):
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    cli.run_main(lambda: predict.main(argv))
  out = capsys.readouterr()
  return exit_info.value.code, out.out, out.err


def direct_probabilities(workdir, images_u8, weights="ema", step=None):
  """softmax of the model applied to `images_u8` normalized as training
  does, computed here from the checkpoint without jaxcnn.predict."""
  config, state, _ = restore.load_checkpoint(workdir, step)
  model = create_model(config.model)
  mean = np.asarray(config.data.channel_mean, np.float32)
  std = np.asarray(config.data.channel_std, np.float32)

  @jax.jit  # Compiled as predict's is, so the two agree to rounding.
  def apply(variables, images):
    x = augment.normalize(images, config.data.normalization, mean, std)
    return model.apply(variables, x, train=False)

  logits = np.asarray(apply(state_lib.variables_of(state, weights),
                            images_u8), np.float64)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_predictions_are_the_models_on_the_preprocessed_images(
    trained, tmp_path, capsys):
  config, _, _ = restore.load_checkpoint(trained)
  data = load_from_config(config.data, config.seed)
  images = data.test_images[:3]
  paths = []
  for i, image in enumerate(images):
    paths.append(str(tmp_path / f"test{i}.png"))
    Image.fromarray(image).save(paths[-1])
  # An odd-sized, non-square image: its centre 37x37 square, resized to
  # the model's 32x32 (bicubic).
  rng = np.random.default_rng(0)
  odd = rng.integers(0, 256, (37, 45, 3), np.uint8)
  paths.append(str(tmp_path / "odd.png"))
  Image.fromarray(odd).save(paths[-1])
  fitted = np.asarray(Image.fromarray(odd[:, 4:41]).resize(
      (32, 32), Image.Resampling.BICUBIC))
  batch = np.concatenate([images, fitted[None]])

  for weights, step in (("ema", None), ("raw", None), ("ema", 8)):
    argv = ["--workdir", trained, "--json", "--weights", weights, *paths]
    if step:
      argv += ["--step", str(step)]
    code, out, err = run_predict(argv, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["step"] == (step or 16) and report["weights"] == weights
    want = direct_probabilities(trained, batch, weights, step)
    assert len(report["predictions"]) == 4
    for pred, p, path in zip(report["predictions"], want, paths):
      assert pred["image"] == path
      order = np.argsort(-p, kind="stable")[:5]
      assert [t["label"] for t in pred["top"]] == order.tolist()
      assert [t["class"] for t in pred["top"]] == [f"class{i}" for i in order]
      np.testing.assert_allclose([t["probability"] for t in pred["top"]],
                                 p[order], rtol=1e-5, atol=1e-7,
                                 err_msg=f"{weights} {step} {path}")
    assert report["predictions"][-1]["size"] == [45, 37]
    if weights == "ema" and step is None:
      # The comparison tells fittings apart: the whole image squeezed to
      # 32x32 (no crop) gives other probabilities.
      squeezed = np.asarray(Image.fromarray(odd).resize(
          (32, 32), Image.Resampling.BICUBIC))
      other = direct_probabilities(trained, squeezed[None])[0]
      got = np.array([t["probability"] for t in
                      sorted(report["predictions"][-1]["top"],
                             key=lambda t: t["label"])])
      labels = sorted(t["label"] for t in report["predictions"][-1]["top"])
      assert np.abs(other[labels] - got).max() > 1e-4
  # The moving average is not the raw weights, so the two differ.
  raw = direct_probabilities(trained, batch, "raw")
  assert np.abs(raw - direct_probabilities(trained, batch, "ema")).max() > 1e-4


def test_text_output_names_classes_with_probabilities(trained, tmp_path,
                                                      capsys):
  path = str(tmp_path / "big.jpg")
  Image.fromarray(np.full((300, 200, 3), 90, np.uint8)).save(path)
  code, out, err = run_predict(["--workdir", trained, path], capsys)
  assert code == 0, err
  lines = out.strip().splitlines()
  assert lines[0].startswith(f"workdir {trained}, step 16, ema weights: tiny")
  assert lines[2] == f"{path} (200x300)"
  ranks = lines[3:8]
  assert [l.split()[0] for l in ranks] == ["1.", "2.", "3.", "4.", "5."]
  assert all(l.split()[1].startswith("class") and l.endswith("%")
             for l in ranks)
  shares = [float(l.split()[-1].rstrip("%")) for l in ranks]
  assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.01


def test_class_names_for_older_workdirs(tmp_path):
  def config(**data):
    c = config_lib.load_experiment("test")
    for key, value in data.items():
      c.data[key] = value
    return c

  assert predict.class_names_of(config(class_names=tuple("abcdefghij"))) == \
      tuple("abcdefghij")
  assert predict.class_names_of(config(source="tfds:cifar10"))[:3] == (
      "airplane", "automobile", "bird")
  root = tmp_path / "pets"
  for i in range(10):
    (root / "train" / f"k{i}").mkdir(parents=True)
  assert predict.class_names_of(config(source=f"folder:{root}")) == tuple(
      f"k{i}" for i in range(10))
  assert predict.class_names_of(config(source=f"folder:{tmp_path}/gone")) == \
      tuple(str(i) for i in range(10))
  assert predict.class_names_of(config()) == tuple(
      f"class{i}" for i in range(10))
