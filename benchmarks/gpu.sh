#!/usr/bin/env bash
# The README's GPU figures, in one go on a CUDA machine (at most 10 minutes):
#
#   bash benchmarks/gpu.sh [RUN_ROOT]   # default runs/gpu (must not exist yet); needs python3 with torch
#                                       # (CUDA), numpy, matplotlib, tqdm and Pillow; nin need not be installed
#
# 1. the seed recipe (--preset d2l, 5 epochs at 224, bf16 autocast), seed 0, alone on the GPU: its
#    examples/s is the throughput figure;
# 2. side by side on the GPU: seeds 1 and 2 of it, seed 0 in fp32 (bf16 vs fp32), its 20-seed sweep
#    under the short budget, the fast preset, and four candidates for the best preset, each trained on
#    50,000 images and scored on the 10,000 held out (--val-split 10000), never on the test set;
# 3. the candidate with the highest validation accuracy (now the best preset), retrained on all 60,000
#    images with seeds 0-2, then its test accuracy from `nin evaluate` with and without flip TTA
#    (eval.json, eval--tta.json); 4. its short-budget sweep.
# Every step has a time limit (the whole script at most 10 minutes), so a slow machine still returns
# what finished; only candidates that trained all their epochs are compared.
set -u
root=${1:-runs/gpu}
if [ -e "$root" ]; then echo "$root exists: give another RUN_ROOT (nothing was changed)" >&2; exit 2; fi
mkdir -p "$root"
export PYTHONPATH=$(cd "$(dirname "$0")/.." && pwd)/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
lane() { local name=$1 limit=$2; shift 2; timeout -k 10 "$limit" bash -c "$*" >"$root/$name.log" 2>&1; echo "$name: exit $?"; }

nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

# 1. throughput, alone
lane d2l-s0 120 "python3 -m nin train --preset d2l --seed 0 --out '$root'/d2l-s0"
tail -3 "$root/d2l-s0.log"

# 2. side by side
best="--arch nin-bn --resize 28 --dropout 0 --batch-size 256 --lr 0.2 --momentum 0.9 --weight-decay 5e-4"
best+=" --schedule onecycle --warmup 0.2 --label-smoothing 0.1 --init kaiming"
declare -A candidates=(
    [w64-crop-30]="--width 64 --augment flip-crop --epochs 30"
    [w64-erase-30]="--width 64 --augment flip-crop-erase --epochs 30"
    [w64-erase-60]="--width 64 --augment flip-crop-erase --epochs 60"
    [w128-erase-30]="--width 128 --augment flip-crop-erase --epochs 30"
)
lane d2l-s1-s2 220 "python3 -m nin train --preset d2l --seed 1 --out '$root'/d2l-s1 &&
                    python3 -m nin train --preset d2l --seed 2 --out '$root'/d2l-s2" &
lane d2l-fp32 220 "python3 -m nin train --preset d2l --seed 0 --precision fp32 --out '$root'/d2l-fp32" &
lane d2l-sweep 220 "python3 -m nin sweep --preset d2l --epochs 1 --train-limit 10000 --test-limit 2000 \
                    --seeds 20 --out '$root'/d2l-sweep" &
lane fast 220 "python3 -m nin train --preset fast --out '$root'/fast" &
for name in "${!candidates[@]}"; do
    lane "val-$name" 220 "python3 -m nin train $best ${candidates[$name]} --val-split 10000 --out '$root'/val-$name" &
done
wait

# 3. the chosen candidate, on all training images, three seeds
chosen=$(python3 - "$root" <<'EOF'
import json, pathlib, sys
scores = {}
for f in pathlib.Path(sys.argv[1]).glob("val-*/metrics.jsonl"):
    last = json.loads(f.read_text().splitlines()[-1])
    if last["epoch"] == json.loads((f.parent / "config.json").read_text())["epochs"]:  # finished runs only
        scores[f.parent.name[4:]] = last["val_acc"]
for name, acc in sorted(scores.items(), key=lambda kv: -kv[1]):
    print(f"validation accuracy {acc:.4f} {name}", file=sys.stderr)
print(max(scores, key=scores.get) if scores else "")
EOF
)
echo "chosen: ${chosen:-none}"
if [ -n "$chosen" ]; then
    left=$((470 - SECONDS))  # steps 1-3 stay under 8 minutes
    for seed in 0 1 2; do
        lane "best-s$seed" $((left > 60 ? left : 60)) "python3 -m nin train $best ${candidates[$chosen]} --seed $seed --out '$root'/best-s$seed &&
                               for tta in '' --tta; do python3 -m nin evaluate '$root'/best-s$seed \$tta --json > '$root'/best-s$seed/eval\$tta.json; done" &
    done
    wait
    # 4. and its 20 seeds under the short budget of the other sweeps (1 epoch on 10,000 images)
    lane best-sweep 120 "python3 -m nin sweep $best ${candidates[$chosen]} --epochs 1 --train-limit 10000 \
                         --test-limit 2000 --seeds 20 --out '$root'/best-sweep"
fi

for log in "$root"/*.log; do echo "== $log"; grep -E "epoch [0-9]+/|examples/sec on|wall time|error|warning|test accuracy over" "$log" | tail -4; done
