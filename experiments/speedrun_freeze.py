"""experiments/speedrun_pruned.py with the first conv group frozen for the
last 30% of the steps (optim.freeze, FreezeOut): from step 194 of 277 on,
group1's filters and BatchNorm biases take no update (its BatchNorm
statistics still follow the batches), and since the whitening stem before
it is frozen too, the train step stops the backward pass at group 2's input
(state.Setup.frozen_blocks_from): no gradients for group 1's two convs,
its pool and BatchNorms. Everything else is speedrun_pruned's: 277 steps
of 1,536, the first 166 on 24x24 crops, pruning, the optimizer groups and
their rates, label smoothing, TTA on the 25% least confident test images.

Why: on the 2-core CPU a whole-image step with group 1 frozen costs about
0.73-0.76x a full one (group 1 works on the 31x31 and 15x15 maps), and the
rates have fallen to 30% of their peaks by then, so the first layers move
little anyway. Over the last 83 steps that is about 8% less training time.

Measured for issue #21 on the 2-core CPU: docs/performance.md, "A
fourteenth session".

    python -m jaxcnn.train --exp speedrun_freeze --data folder:PATH
    python -m jaxcnn.train --exp speedrun_freeze --seeds 4 --data folder:PATH
"""
from jaxcnn.config import load_experiment

FREEZE_AT_STEP = 194  # round(0.7 * 277)
STEPS_PER_EPOCH = 32  # 50,000 // 1,536 full batches.


def get_config():
  c = load_experiment("speedrun_pruned")
  # Each pair a list, as --set and a saved config.json give it.
  c.optim.freeze = (["^group1/", FREEZE_AT_STEP / STEPS_PER_EPOCH],)
  return c
