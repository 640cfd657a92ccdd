"""experiments/speedrun_pruned.py with three image sizes instead of two, and
4% fewer steps: 266 steps of 1,536, the first 30% (80) on 20x20 windows of
the translated, flipped images (data.first_crop_size / first_crop_fraction),
the next 30% (to step 160) on 24x24 as before, the last 106 on whole 32x32
images. Pruning, optimizer groups, label smoothing, TTA: speedrun_pruned's;
every rate falls linearly to 0 over the 266 steps.

Why: on the 2-core CPU a 20x20 step costs about 0.36x a whole-image step
(24x24: 0.54x), so the first stage and the 11 steps less cut the training
time by about 10%. At the CPU-sized scale (speedrun_pruned_ablation, member
first_crops_20_0.3, three seeds) a first 30% on 20x20 cost no accuracy;
more of it (45%, 60%) or 16x16 did.

Measured for issue #21 on the 2-core CPU (docs/performance.md, "A
thirteenth session"): 0.79-0.82x airbench94_muon's time beside it, but
0.43 points below speedrun_pruned with TTA on the same two seeds (90.30
and 90.20%): at full width the 20x20 steps cost accuracy that the
quarter-width net did not lose. speedrun_pruned stays the recipe.

    python -m jaxcnn.train --exp speedrun_progressive --data folder:PATH
    python -m jaxcnn.train --exp speedrun_progressive --seeds 4 --data folder:PATH
"""
from jaxcnn.config import load_experiment

STEPS = 266


def get_config():
  c = load_experiment("speedrun_pruned")
  c.data.first_crop_size = 20
  c.data.first_crop_fraction = 0.3
  c.train.num_steps = STEPS
  return c
