#!/usr/bin/env bash
# The CUDA-only paths, measured on the GPUs of the machine it runs on; prints tables for BENCHMARKS.md.
#   bash tools/gpu_check.sh [OUT_DIR]
# 1. attention: xformers vs SDPA vs math outputs (max abs difference, bf16 and fp16) and speed at 197 / 577 / 1025
#    tokens, forward and forward+backward (mmzoo bench attention --device cuda);
# 2. a bf16 and an fp32 forward of x2vlm-base on the GPU with xformers and with SDPA (outputs compared);
# 3. sharded training of x2vlm-large over every GPU present (trainer.strategy=model_parallel: torch's fully_shard
#    through Lightning) for a few steps on the shapes data, with its time per step and peak GPU memory.
set -euo pipefail
out="${1:-gpu_check}"
mkdir -p "$out"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
run="$here/run"
"$run" python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(f'{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}')" | tee "$out/device.txt"
"$run" python -c "import xformers; print('xformers', xformers.__version__)" | tee -a "$out/device.txt" || \
    echo "xformers not installed (pip install 'mmzoo[gpu]'): the xformers rows will be missing" | tee -a "$out/device.txt"

for dtype in bfloat16 float16; do
    "$run" mmzoo bench attention --device cuda --dtype "$dtype" --repeat 20 | tee "$out/attention_forward_$dtype.md"
    "$run" mmzoo bench attention --device cuda --dtype "$dtype" --repeat 20 --backward \
        | tee "$out/attention_backward_$dtype.md"
done

"$run" python - <<'PY' | tee "$out/x2vlm_base_backends.md"
import time
import torch
import zoo
from zoo.modules.attention import force_backend
torch.manual_seed(0)
model = zoo.create_model("x2vlm-base", task="retrieval").cuda().eval()
images = torch.randn(8, 3, 224, 224, device="cuda")
ids = torch.randint(1000, 2000, (8, 40), device="cuda")
mask = torch.ones_like(ids)
print("| dtype | backend | forward ms (median of 10) | max abs diff of the fused tokens to math |")
print("|---|---|---:|---:|")
for dtype in (torch.float32, torch.bfloat16):
    ref = None
    for backend in ("math", "sdpa", "xformers"):
        try:
            with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32), \
                    force_backend(backend):
                out = model(images, ids, mask)["fused"].tokens.float()
                times = []
                for _ in range(10):
                    torch.cuda.synchronize(); t = time.perf_counter()
                    model(images, ids, mask)
                    torch.cuda.synchronize(); times.append(time.perf_counter() - t)
        except Exception as exc:  # noqa: BLE001
            print(f"| {dtype} | {backend} | failed: {type(exc).__name__}: {str(exc)[:80]} | |")
            continue
        ref = out if ref is None else ref
        diff = float((out - ref).abs().max())
        print(f"| {str(dtype).replace('torch.', '')} | {backend} | {1000 * sorted(times)[5]:.1f} | {diff:.2e} |")
PY

gpus="$("$run" python -c "import torch; print(torch.cuda.device_count())")"
"$run" mmzoo train vqa-shapes model.name=x2vlm-large model.task=vqa_cls 'model.overrides={vqa.num_classes: 58}' \
    trainer.accelerator=gpu trainer.devices="$gpus" trainer.strategy=model_parallel trainer.precision=bf16-mixed \
    trainer.max_steps=20 trainer.limit_val_batches=0 data.test=null data.batch_size=8 data.image_size=224 \
    train.output_dir="$out" train.name=fsdp-x2vlm-large train.export=false --overwrite 2>&1 | tail -n 20 \
    | tee "$out/fsdp_x2vlm_large.txt"
echo "results under $out/"
