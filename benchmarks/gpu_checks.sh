#!/usr/bin/env bash
# The GPU checks behind BENCHMARKS.md, on one GPU, from the repository root:
#   bash benchmarks/gpu_checks.sh tests|step|train|fsdp|sample|gan [OUT_DIR [OVERRIDE...]]
# tests : the `gpu` test suite (fused attention, bf16, FSDP, sharded resume, MFU logging)
# step  : dit_step.py, DiT-XL/2 batch 256 bf16: eager, compile, max-autotune, fused AdamW, profile
# train : the real training CLI, DiT-XL/2 at 256px (32x32x4 latents), batch 256, bf16, compiled,
#         on synthetic latent shards (the speed does not depend on the data), throughput callback
# fsdp  : the same run under strategy=fsdp (sharded checkpoints), eager
# sample: dit_sample.py, DDPM-250 vs DDIM-50 vs flow-Euler-50 with guidance, fp32 and bf16
# gan   : stylegan2_step.py, a StyleGAN2 iteration (model=stylegan2/paper widths, 256x256, batch 32)
# Outputs (logs, metrics.csv) go to OUT_DIR (default gpu_checks/). train/fsdp pass the OVERRIDEs on
# to the training CLI (e.g. compile=true); STEPS sets the number of steps (default 200), TAG is
# appended to the run directory's name.
set -euo pipefail
stage=${1:?usage: gpu_checks.sh tests|step|train|fsdp|sample|gan [OUT_DIR]}
out=${2:-gpu_checks}
mkdir -p "$out"
export PYTHONPATH=packages/common/src:packages/diffusion_transformer/src${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python}
STEPS=${STEPS:-200}

latents() {  # synthetic ImageNet-256 latent shards in extract_latents' format
    local root=$1
    [ -f "$root/manifest.json" ] && return
    $PY - "$root" <<'EOF'
import json, sys
from pathlib import Path
import torch
from safetensors.torch import save_file
root = Path(sys.argv[1]); root.mkdir(parents=True, exist_ok=True)
g = torch.Generator().manual_seed(0)
shards = []
for k in range(4):
    n = 1024
    latents = torch.randn(n, 2, 4, 32, 32, generator=g).to(torch.bfloat16)
    labels = torch.randint(0, 1000, (n,), generator=g)
    save_file({"latents": latents, "labels": labels}, root / f"shard_{k:05d}.safetensors")
    shards.append({"file": f"shard_{k:05d}.safetensors", "num": n})
manifest = {"format": "dit-latents-v1", "image_size": 256, "num": 4096, "shards": shards}
(root / "manifest.json").write_text(json.dumps(manifest))
EOF
}

train_xl2() {  # run_dir, extra overrides...
    local run=$1; shift
    $PY -m diffusion_transformer.train experiment=imagenet256 \
        data.root="$out/latents" data.vae=null \
        trainer.max_steps="$STEPS" trainer.log_every_n_steps=25 trainer.enable_progress_bar=false \
        logger=csv '~callbacks.samples' '~callbacks.eval' checkpoint_every=1000000 \
        run_dir="$run" "$@"
    $PY - "$run" <<'EOF'
import csv, sys
rows = [r for r in csv.DictReader(open(f"{sys.argv[1]}/csv/metrics.csv")) if r.get("perf/mfu")]
for r in rows:
    print(f"step {int(r['step']) + 1:5d}  img/s {float(r['perf/images_per_sec']):7.1f}  "
          f"MFU {100 * float(r['perf/mfu']):5.1f}%  peak {float(r['perf/peak_mem_gib']):6.1f} GiB")
EOF
}

case $stage in
tests)
    $PY -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$out/tests.log" ;;
step)
    $PY benchmarks/dit_step.py --bf16-only --compile-mode max-autotune-no-cudagraphs \
        --fused-adam --profile 2>&1 | tee "$out/step.log" ;;
train)
    latents "$out/latents"
    train_xl2 "$out/xl2_bf16_compile${TAG:-}" compile=true "${@:3}" 2>&1 | tee "$out/train.log" ;;
fsdp)
    latents "$out/latents"
    train_xl2 "$out/xl2_fsdp${TAG:-}" strategy=fsdp strategy.state_dict_type=sharded "${@:3}" \
        2>&1 | tee "$out/fsdp${TAG:-}.log" ;;
sample)
    $PY benchmarks/dit_sample.py 2>&1 | tee "$out/sample.log" ;;
gan)
    PYTHONPATH=packages/gangealing/src:$PYTHONPATH $PY benchmarks/stylegan2_step.py \
        2>&1 | tee "$out/gan.log" ;;
*)
    echo "unknown stage $stage" >&2; exit 2 ;;
esac
