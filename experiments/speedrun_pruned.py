"""experiments/speedrun_small_crops.py with loss-based data pruning: from
epoch 2 on, each data epoch trains only on the 75% of the training images
whose loss was highest when each was last trained on (data.prune_fraction
0.25, data.prune_from_epochs 2), 24 batches of 1,536 instead of 32.

The run is as long as speedrun_small_crops (277 steps, the first 166 on
24x24 crops) and its steps cost the same, so it takes the same time; what
changes is which images the last 213 steps see: the easy quarter sits out
and the rest come round more often (10.9 data epochs where
speedrun_small_crops has 8.7). The loss table is part of the train state,
so a resumed run picks the same images.

Measured for issue #21 beside speedrun_small_crops on the same seeds (2-core
CPU): docs/performance.md, "A ninth session".

    python -m jaxcnn.train --exp speedrun_pruned --data folder:PATH
    python -m jaxcnn.train --exp speedrun_pruned --seeds 4 --data folder:PATH
"""
from jaxcnn.config import load_experiment


def get_config():
  c = load_experiment("speedrun_small_crops")
  c.data.prune_fraction = 0.25
  c.data.prune_from_epochs = 2.0
  return c
