#!/bin/bash
# collect_stats on vs off, alternating: half-width AlexNet-like net, the
# small-scale study settings, 234 steps. Prints the median train step of each
# run (docs/studies/README.md, "Cost"). Run from the repository root with the
# real images at ../shared/data/cifar10-jpeg (or set DATA).
DATA=${DATA:-../shared/data/cifar10-jpeg}
OUT=${OUT:-/tmp/jaxcnn_stats_cost}; mkdir -p "$OUT"
for round in 1 2; do
for on in false true; do
  wd=$OUT/run_${on}_$round; rm -rf $wd
  .venv/bin/python -m jaxcnn.train --exp alexnet --data folder:$DATA --workdir $wd \
    --set data.train_limit=5000 --set data.test_limit=1000 --set model.width=0.5 --set train.num_steps=234 \
    --set train.log_every_steps=20 --set train.eval_every_epochs=0 --set train.checkpoint_every_steps=100000 \
    --set train.collect_stats=$on --set train.progress_bar=false --set 'optim.groups.*.optimizer=momentum' --set 'optim.groups.*.lr=0.01' > $wd.log 2>&1
  .venv/bin/python - "$wd" "$on" <<'PY'
import json, sys, statistics, pathlib
recs=[json.loads(l) for l in open(pathlib.Path(sys.argv[1])/"metrics.jsonl")]
train=[r for r in recs if r.get("kind")=="train"]
sp=[r["sec_per_batch"] for r in train[1:] if "sec_per_batch" in r]
line = (f"collect_stats={sys.argv[2]}: median train step {statistics.median(sp):.4f} s "
        f"over {len(sp)} log intervals; first to last log record "
        f"{train[-1]['time'] - train[0]['time']:.1f} s")
stats = {r["step"]: r["time"] for r in recs if r.get("kind") == "stats"}
took = [stats[r["step"]] - r["time"] for r in train if r["step"] in stats]
if took:  # The stats record follows the train record of the same step.
  line += (f"; statistics {statistics.median(took[1:] or took):.3f} s per log step "
           f"(first, with its compile: {took[0]:.2f} s)")
print(line)
PY
done
done
