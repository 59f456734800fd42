#!/usr/bin/env bash
# The GPU check (issue 29), one script for one call on an H100/H200 machine, at most about 8 minutes:
#
#   1. step rate: our nnunet against nnU-Net's PlainConvUNet at 80 x 160 x 160, batch 2, bf16 and
#      fp16: patches/s and peak memory (bench/train_step.py);
#   2. our trainer's rate fed by its loader with 4 workers, for train.augment_on loader and device,
#      against the same steps with no data loading (the ratio is the GPU's busy share), and
#      torch.compile on and off (bench/trainer_rate.py);
#   3. a 3-minute training of the demo cohort on the GPU at the study's widths (32 -> 320), with
#      its test Dice (train.py; the epochs come from step 2's rate).
#
#   bash bench/gpu_check.sh                          # on the GPU machine: everything into $OUT or bench/out/gpu_check
#   bash bench/gpu_check.sh --device cpu --quick     # the dry run on a CPU: small sizes, proves it end to end
#   bash bench/gpu_check.sh --wheels wheels/         # install what the machine lacks from wheels, offline
#
# The machine has torch, numpy, scipy, pandas, tensorboard, pyyaml and matplotlib but no internet:
# nibabel and dynamic-network-architectures (the peer network) come as wheels in --wheels
# (pip download -d wheels nibabel dynamic-network-architectures --no-deps). Step 1 is skipped,
# saying so, where dynamic-network-architectures cannot be had.
set -uo pipefail

device=cuda
quick=0
wheels=""
out="${OUT:-bench/out/gpu_check}"
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --quick) quick=1; shift ;;
        --wheels) wheels="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"
log="$out/gpu_check.log"
exec > >(tee "$log") 2>&1
start=$(date +%s)
say() { printf '\n== %s (%ds)\n' "$1" $(( $(date +%s) - start )); }

say "machine"
python -c "import torch, sys; print('torch', torch.__version__, '| python', sys.version.split()[0], '| cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "cpus: $(nproc)"

have() { python -c "import $1" 2>/dev/null; }
for pair in nibabel:nibabel dynamic_network_architectures:dynamic-network-architectures; do
    module="${pair%%:*}"; package="${pair##*:}"
    if ! have "$module" && [ -n "$wheels" ]; then
        pip install --quiet --no-index --no-deps --find-links "$wheels" "$package" || echo "note: $package not installable from $wheels"
    fi
    have "$module" && echo "$package: present" || echo "$package: absent"
done

if [ "$quick" = 1 ]; then
    step_size=(--patch 32 64 64 --steps 3 --warmup 1); rate=(--quick); budget_s=20; rate_limit=900
else
    step_size=(--patch 80 160 160 --steps 50 --warmup 10); rate=(--workers 4); budget_s=180; rate_limit=240
fi

say "1. step rate: ours against PlainConvUNet, batch 2"
amps="bf16 fp16"
[ "$device" = cpu ] && amps="bf16 off"    # fp16 autocast needs CUDA
if have dynamic_network_architectures; then
    for amp in $amps; do
        echo "-- $amp"
        timeout 150 python bench/train_step.py --device "$device" --batch 2 --amp "$amp" "${step_size[@]}" \
            --json "$out/step_$amp.json" || echo "step rate $amp: failed or timed out"
    done
else
    echo "skipped: dynamic-network-architectures is absent (bring its wheel with --wheels)"
fi

say "2. our trainer's rate: fed by the loader (each augment_on) against no data loading; torch.compile"
timeout "$rate_limit" python bench/trainer_rate.py --device "$device" --compile "${rate[@]}" --workdir "$out/rate_cohort" \
    --json "$out/trainer_rate.json" || echo "trainer rate: failed or timed out"

say "3. a ${budget_s}-second training of the demo cohort at the study's widths"
epochs=$(python - "$out/trainer_rate.json" "$budget_s" <<'EOF'
import json, math, sys
try:
    results = json.load(open(sys.argv[1]))["results"]
    rate = max(results["loader/loader"]["steps_per_s"], results["loader/device"]["steps_per_s"])
except (OSError, KeyError, ValueError):
    rate = 1.0
print(max(1, math.floor(rate * float(sys.argv[2]) / 16)))   # the demo's epoch: 32 training cases, batch 2
EOF
)
widths=(--set model.base_features=32 --set model.max_features=320)
[ "$quick" = 1 ] && widths=(--set model.base_features=8 --set model.max_features=64 --set data.synthesize_cases=12 --set data.test=4)
echo "epochs: $epochs (16 steps each)"
timeout 330 python train.py --config configs/demo.yaml --name "gpu_check_$(date +%s)" --no-progress \
    --set train.out_dir="$out/runs" --set data.raw="$out/demo_raw" --set data.cache="$out/demo_cache" \
    --set train.device="$device" --set train.amp=auto --set train.workers=4 --set train.augment_on=device \
    --set train.epochs="$epochs" --set eval.every="$epochs" "${widths[@]}" \
    | grep -E "^(data|model|epoch .* step|all |sex |male |female |run folder)|patches/s|Dice" | tail -25 \
    || echo "training: failed or timed out"

say "done"
echo "log: $log"
