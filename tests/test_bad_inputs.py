"""Every bad input gets one `error:` line, a non-zero exit, and leaves the
workdir as it was. With JAXCNN_WRITE_DOCS=1 this also writes the table in
docs/bad-inputs.md from what the commands really printed."""
import os
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from jaxcnn import cli, train
from jaxcnn.workdir_lock import WorkdirLock

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "bad-inputs.md"
RESULTS = []


def make_tree(root, *, skip_split=None, empty_class=False, text_file=False,
              odd_size=False):
  for split in ("train", "test"):
    if split == skip_split:
      continue
    for cls in ("cat", "dog"):
      d = root / split / cls
      d.mkdir(parents=True)
      if empty_class and split == "train" and cls == "dog":
        continue
      for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(
            d / f"{i}.png")
  if text_file:
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
  if odd_size:
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(
        root / "train" / "dog" / "9.png")
  return root


def run(argv, capsys, module=train):
  with pytest.raises(SystemExit) as exit_info:
    cli.run_main(lambda: module.main(argv))
  err = capsys.readouterr().err
  return exit_info.value.code, [l for l in err.splitlines() if l.strip()]


TINY = ["--exp", "test", "--set", "train.num_steps=8"]

CASES = [
    ("unknown experiment", ["--exp", "vgg17"], 2, "unknown experiment 'vgg17'"),
    ("unknown override key", TINY + ["--set", "train.epochs=2"], 2,
     "unknown config key 'train.epochs'"),
    ("override of the wrong type", TINY + ["--set", "train.batch_size=big"], 2,
     "expected an integer"),
    ("override without a value", TINY + ["--set", "train.batch_size"], 2,
     "not of the form key=value"),
    ("zero batch size", TINY + ["--set", "train.batch_size=0"], 2,
     "train.batch_size must be positive"),
    ("negative epochs", TINY + ["--set", "train.num_epochs=-1"], 2,
     "train.num_epochs must be >= 0"),
    ("training-error target in percent",
     TINY + ["--set", "train.stop_at_train_error=25"], 2,
     "train.stop_at_train_error must be in [0, 1)"),
    ("zero seeds", TINY + ["--seeds", "0"], 2, "--seeds must be >= 1"),
    ("two run lengths", TINY + ["--set", "train.num_epochs=2"], 2,
     "both train.num_epochs=2 and train.num_steps=8 are set"),
    ("batch not divisible by the device count",
     TINY + ["--set", "train.batch_size=30"], 2,
     "does not divide evenly over 4 devices"),
    ("more devices than exist", TINY + ["--set", "train.num_devices=64"], 2,
     "only 4 local devices"),
    ("unknown data source", TINY + ["--data", "imagenet"], 2, "imagenet"),
    ("missing data directory", TINY + ["--data", "folder:{tmp}/nowhere"], 2,
     "nowhere"),
    ("folder dataset without a test split", TINY + ["--data", "folder:{nosplit}"],
     2, "test"),
    ("folder dataset with an empty class", TINY + ["--data", "folder:{empty}"], 2,
     "dog"),
    ("folder dataset with a non-image file", TINY + ["--data", "folder:{text}"], 2,
     "notes.txt"),
    ("folder dataset with an image of another size",
     TINY + ["--data", "folder:{odd}"], 2, "9.png"),
    ("unknown model", TINY + ["--set", "model.name=resnet"], 2,
     "model.name='resnet' is not a registered model; choose one of "
     "'alexnet', 'vgg', 'speednet', 'convnet4', 'tiny'"),
    ("misspelt model", TINY + ["--set", "model.name=speedent"], 2,
     "did you mean 'speednet'?"),
    ("field of another model's section",
     TINY + ["--set", "model.vgg.depth=12"], 2,
     "model.vgg.depth is a field of model 'vgg', but model.name is 'tiny'"),
    ("unsupported value of the model's own field",
     TINY + ["--set", "model.name=vgg", "--set", "model.vgg.depth=12"], 2,
     "model.vgg.depth=12 is not supported by vgg; choose one of 11, 13, 16, "
     "19"),
    ("flat model field of the old schema",
     TINY + ["--set", "model.depth=11"], 2,
     "unknown config key 'model.depth'; it is now model.vgg.depth"),
    ("unknown activation", TINY + ["--set", "model.activation=swish"], 2, "swish"),
    ("unknown optimizer", TINY + ["--set", "optim.groups.*.optimizer=lion"], 2,
     "group 'kernel': unknown optimizer 'lion'"),
    ("unknown schedule", TINY + ["--set", "optim.schedule=linear"], 2, "linear"),
    ("unknown normalization", TINY + ["--set", "data.normalization=zca"], 2,
     "data.normalization='zca'"),
    ("unknown flip mode", TINY + ["--set", "data.flip_mode=sometimes"], 2,
     "data.flip_mode='sometimes'"),
    ("unknown small-crop mode", TINY + ["--set", "data.small_crop_mode=crop"],
     2, "data.small_crop_mode='crop'"),
    ("data pruning fraction out of range",
     TINY + ["--set", "data.prune_fraction=1.0"], 2,
     "data.prune_fraction must be in [0, 1)"),
    ("data pruning that keeps no whole batch",
     TINY + ["--set", "data.prune_fraction=0.95"], 2,
     "keeps 26 of the 512 training images"),
    ("unknown test-time augmentation",
     TINY + ["--set", "train.final_tta=rotate"], 2, "train.final_tta='rotate'"),
    ("TTA fraction out of range",
     TINY + ["--set", "train.final_tta_fraction=0"], 2,
     "train.final_tta_fraction must be in (0, 1]"),
    ("label smoothing out of range",
     TINY + ["--set", "train.label_smoothing=1.5"], 2,
     "train.label_smoothing must be in [0, 1)"),
    ("per-1024 units with Adam",
     TINY + ["--set", "optim.groups.rest.optimizer=adam", "--set",
             "optim.groups.rest.units=per_1024"], 2,
     "optim.groups.rest: units 'per_1024' are defined for momentum and "
     "nesterov, not 'adam'"),
    # Parameter groups (optim.groups).
    ("bad group regex", TINY + ["--set", "optim.groups.kernel.match=conv(("],
     2, "optim.groups.kernel.match 'conv((' is not a valid regex"),
    ("group that matches no parameter",
     TINY + ["--set", "optim.groups.kernel.match=^nosuch/"], 2,
     "optim.groups: group 'kernel' matches no parameter"),
    ("parameters no group matches",
     TINY + ["--set", "optim.groups.rest.match=bias$"], 2,
     "optim.groups: no group matches bn1/scale, bn2/scale (add a catch-all "
     "group match='.*' last)"),
    ("two groups with the same pattern",
     TINY + ["--set", "optim.groups.rest.match=kernel"], 2,
     "optim.groups: groups 'kernel' and 'rest' have the same match 'kernel'"),
    ("group option its optimizer does not have",
     TINY + ["--set", "optim.groups.kernel.b1=0.5"], 2,
     "group 'kernel': optimizer 'momentum' has no option 'b1'"),
    ("unknown group", TINY + ["--set", "optim.groups.head.lr=0.5"], 2,
     "no group 'head' in optim.groups (the groups: 0: kernel, 1: rest; or "
     "'*' for all)"),
    ("validation split as large as the training set",
     TINY + ["--set", "data.validation_size=512"], 2,
     "data.validation_size=512 is not smaller than the 512 training images"),
    ("validation split not a multiple of the classes",
     TINY + ["--set", "data.validation_size=105"], 2,
     "data.validation_size=105 is not a multiple of the 10 classes"),
    ("negative validation split", TINY + ["--set", "data.validation_size=-10"],
     2, "data.validation_size must be >= 0"),
    # Training a saved config again (--exp WORKDIR/config.json).
    ("saved config that is not valid JSON", ["--exp", "{broken}"], 2,
     "config file {broken} is not valid JSON"),
    ("json file that is no saved config", ["--exp", "{foreign}"], 2,
     "{foreign} is not a config saved by jaxcnn"),
    ("missing saved config", ["--exp", "{tmp}/nowhere/config.json"], 2,
     "config file {tmp}/nowhere/config.json does not exist"),
    # Other commands (the fifth field): their argv is complete, and the
    # workdirs they read ({run}, {damaged}) must stay as they were.
    ("checkpoint folder given as the workdir",
     ["--workdir", "{run}/checkpoints/4"], 1,
     "{run}/checkpoints/4 is a checkpoint folder of the run in {run}, not a "
     "workdir: use --workdir {run} --step 4", "eval"),
    ("TTA fraction of eval out of range",
     ["--workdir", "{run}", "--tta", "mirror", "--tta_fraction", "25"], 2,
     "--tta_fraction must be in (0, 1]", "eval"),
    ("checkpoints folder given as the workdir",
     ["--workdir", "{run}/checkpoints"], 1,
     "use --workdir {run} (saved steps: 4, 8)", "inspect"),
    ("newest checkpoint unreadable", ["--workdir", "{damaged}"], 1,
     "the newest readable checkpoint is step 4: use --workdir {damaged} "
     "--step 4", "eval"),
    ("image to classify is missing",
     ["--workdir", "{run}", "{tmp}/nowhere.png"], 2,
     "image {tmp}/nowhere.png does not exist", "predict"),
    ("file to classify is no image", ["--workdir", "{run}", "{notimage}"], 2,
     "{notimage} is not an image PIL can read", "predict"),
    ("no workdir to classify with",
     ["--workdir", "{tmp}/nowhere", "{image}"], 1,
     "workdir {tmp}/nowhere does not exist", "predict"),
    # These two run on a copy of a workdir trained by TRAINED (16 steps).
    ("run shorter than the step the workdir reached", TINY, 1,
     "is at step 16, past this run's end at step 8 (train.num_steps=8)"),
    ("resume with other data (data.train_limit)",
     TINY + ["--set", "train.num_steps=16", "--set", "data.train_limit=256"], 1,
     "a different config: data.train_limit: 0 -> 256 (and, derived from the "
     "data: data.channel_mean"),
]
TRAINED = ["--exp", "test", "--set", "train.num_steps=16"]
ON_A_TRAINED_WORKDIR = {"run shorter than the step the workdir reached",
                        "resume with other data (data.train_limit)"}


def listing(workdir):
  return sorted((str(p.relative_to(workdir)), p.read_bytes())
                for p in pathlib.Path(workdir).rglob("*")
                if p.is_file() and p.name != ".lock")


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
  root = tmp_path_factory.mktemp("trees")
  (root / "broken").mkdir()
  (root / "broken" / "config.json").write_text('{"model": {"name": ')
  (root / "foreign.json").write_text('{"name": "not a jaxcnn config"}')
  (root / "notes.txt").write_text("not an image")
  Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(root / "image.png")
  trained = root / "trained"
  with pytest.raises(SystemExit) as exit_info:
    cli.run_main(lambda: train.main(TRAINED + ["--workdir", str(trained)]))
  assert exit_info.value.code == 0
  return {
      "trained": str(trained),
      "tmp": str(root),
      "nosplit": str(make_tree(root / "nosplit", skip_split="test")),
      "empty": str(make_tree(root / "empty", empty_class=True)),
      "text": str(make_tree(root / "text", text_file=True)),
      "odd": str(make_tree(root / "odd", odd_size=True)),
      "broken": str(root / "broken" / "config.json"),
      "foreign": str(root / "foreign.json"),
      "notimage": str(root / "notes.txt"),
      "image": str(root / "image.png"),
  }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{run}: a tiny run with checkpoints at steps 4 and 8; {damaged}: a copy
  whose step 8 has truncated data files."""
  import shutil
  root = tmp_path_factory.mktemp("runs")
  run_dir, damaged = root / "run", root / "damaged"
  code = train.main(["--exp", "test", "--workdir", str(run_dir),
                     "--set", "train.num_steps=8",
                     "--set", "train.checkpoint_every_steps=4",
                     "--set", "train.eval_every_epochs=0",
                     "--set", "optim.warmup_epochs=0"])
  assert code == 0
  shutil.copytree(run_dir, damaged)
  for path in (damaged / "checkpoints" / "8" / "state" / "d").iterdir():
    with open(path, "r+b") as f:
      f.truncate(100)
  return {"run": str(run_dir), "damaged": str(damaged)}


def _tree_state(path) -> dict:
  return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in pathlib.Path(path).rglob("*")}


@pytest.mark.parametrize("name, argv, code, message, command",
                         [c + ("train",) * (5 - len(c)) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input(name, argv, code, message, command, trees, tmp_path,
                   capsys, request):
  import importlib
  paths = dict(trees)
  if any("{run}" in a or "{damaged}" in a for a in argv):
    paths.update(request.getfixturevalue("runs"))
  argv = [a.format(**paths) for a in argv]
  workdir = tmp_path / "w"
  if name in ON_A_TRAINED_WORKDIR:
    shutil.copytree(trees["trained"], workdir)
    before = listing(workdir)
  if command == "train":
    argv += ["--workdir", str(workdir)]
  read = [paths[k] for k in ("run", "damaged") if k in paths]
  before_read = [_tree_state(p) for p in read]
  got_code, lines = run(argv, capsys,
                        importlib.import_module(f"jaxcnn.{command}"))
  assert got_code == code, lines
  errors = [l for l in lines if l.startswith("error: ")]
  assert len(errors) == 1 and not any("Traceback" in l for l in lines), lines
  assert message.format(**paths) in errors[0]
  paths = {**paths, "workdir": str(workdir)}
  if name in ON_A_TRAINED_WORKDIR:
    assert listing(workdir) == before  # Nothing changed.
  else:
    assert not workdir.exists()  # Nothing created.
  assert [_tree_state(p) for p in read] == before_read  # Nothing changed.
  RESULTS.append((name, " ".join([f"python -m jaxcnn.{command}"] + argv),
                  code, errors[0], paths))


def test_bad_input_on_an_existing_workdir(tmp_path, capsys, trees):
  """A different model in a used workdir, and a workdir in use."""
  workdir = tmp_path / "w"
  code, lines = run(TINY + ["--workdir", str(workdir)], capsys)
  assert code == 0, lines
  saved = sorted(p.name for p in (workdir / "checkpoints").iterdir())

  argv = TINY + ["--set", "model.activation=tanh", "--workdir", str(workdir)]
  code, lines = run(argv, capsys)
  assert code == 1 and "model.activation: 'relu' -> 'tanh'" in lines[-1]
  RESULTS.append(("workdir holds a run with another config",
                  " ".join(["python -m jaxcnn.train"] + argv), code, lines[-1],
                  {"tmp": str(tmp_path)}))

  with WorkdirLock(workdir):  # As if another trainer held it.
    argv = TINY + ["--workdir", str(workdir)]
    code, lines = run(argv, capsys)
  assert code == 1 and f"in use by pid {os.getpid()}" in lines[-1]
  RESULTS.append(("workdir in use by another trainer",
                  " ".join(["python -m jaxcnn.train"] + argv), code, lines[-1],
                  {"tmp": str(tmp_path)}))
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == saved


EXPERIMENT_FILES = {
    "experiment file with a syntax error": (
        "def get_config(:\n  pass\n", "bad.py:1: syntax error"),
    "experiment file whose get_config() raises": (
        "from jaxcnn.config import load_experiment\n"
        "def get_config():\n  c = load_experiment('test')\n"
        "  c.train.batch_size = 32 // 0\n  return c\n",
        "bad.py:4: ZeroDivisionError in get_config(): integer division or "
        "modulo by zero"),
    "experiment file setting a field jaxcnn does not have": (
        "from jaxcnn.config import load_experiment\n"
        "def get_config():\n  c = load_experiment('test')\n"
        "  c.model.widht = 2.0\n  return c\n",
        "bad.py: get_config() sets 'model.widht', which is not a config "
        "field (see jaxcnn/defaults.py); did you mean model.width"),
}


@pytest.mark.parametrize("name", sorted(EXPERIMENT_FILES))
def test_error_in_the_users_experiment_file(name, tmp_path, capsys):
  """The user's own experiment file: one line naming the file (and the
  line), not a traceback into jaxcnn."""
  text, message = EXPERIMENT_FILES[name]
  path = tmp_path / "bad.py"
  path.write_text(text)
  workdir = tmp_path / "w"
  argv = ["--exp", str(path), "--set", "train.num_steps=8"]
  code, lines = run(argv + ["--workdir", str(workdir)], capsys)
  assert code == 2 and len(lines) == 1, lines
  assert lines[0].startswith("error: ") and message in lines[0], lines
  assert not workdir.exists()
  RESULTS.append((name, " ".join(["python -m jaxcnn.train"] + argv), code,
                  lines[0], {"tmp": str(tmp_path)}))


def test_workdir_path_the_file_system_refuses(tmp_path, capsys):
  """A file where the workdir (or a folder above it) should be is named
  and left as it was; a path the file system refuses for another reason
  (here: /proc, where no folder can be made) gets its reason in one line."""
  afile = tmp_path / "notes.txt"
  afile.write_text("keep me")
  for workdir in (afile, afile / "run"):
    argv = TINY + ["--workdir", str(workdir)]
    code, lines = run(argv, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0] == (f"error: --workdir {workdir}: {afile} is a file, not "
                        "a folder")
  assert afile.read_text() == "keep me"
  RESULTS.append(("workdir is a file", " ".join(
      ["python -m jaxcnn.train"] + argv), code, lines[0],
      {"tmp": str(tmp_path)}))
  if pathlib.Path("/proc/self").is_dir():
    argv = TINY + ["--workdir", "/proc/jaxcnn_run"]
    code, lines = run(argv, capsys)
    assert code == 1 and lines == [
        "error: /proc/jaxcnn_run: No such file or directory"], lines
    RESULTS.append(("workdir the file system refuses", " ".join(
        ["python -m jaxcnn.train"] + argv), code, lines[0], {}))


# Last: the table is written from what every test above recorded.
def test_write_docs_table():
  """Writes docs/bad-inputs.md (only with JAXCNN_WRITE_DOCS=1)."""
  if os.environ.get("JAXCNN_WRITE_DOCS") != "1":
    pytest.skip("set JAXCNN_WRITE_DOCS=1 to regenerate docs/bad-inputs.md")
  assert len(RESULTS) > len(CASES) + 2, (
      "run the whole file in one process: make test ARGS=\"-n 0 "
      "tests/test_bad_inputs.py\"")
  rows = []
  for name, command, code, message, paths in RESULTS:
    for key, path in sorted(paths.items(), key=lambda kv: -len(kv[1])):
      command = command.replace(path, f"<{key}>")
      message = message.replace(path, f"<{key}>")
    rows.append(f"| {name} | `{command}` | {code} | `{message}` |")
  DOCS.parent.mkdir(exist_ok=True)
  DOCS.write_text(
      "# Bad input and what it gets\n\n"
      "Generated by `JAXCNN_WRITE_DOCS=1 make test "
      "ARGS=\"-n 0 tests/test_bad_inputs.py\"`"
      " on 4 fake CPU devices; each case exits non-zero with one `error:` line "
      "and leaves the workdir as it was (tests/test_bad_inputs.py checks both)."
      "\n\n| input | command | exit | message |\n|---|---|---|---|\n"
      + "\n".join(rows) + "\n")
