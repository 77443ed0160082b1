#!/usr/bin/env bash
# Train the molecules domain's masked-diffusion SELFIES model on the GPU machine.
# Inputs: .gpu-data/molecules/ (from `python scripts/prepare_molecules.py`).
# Outputs: $OUT/molecules.tar.gz (moses-selfies/{config.json,model.safetensors,tokenizer.json},
#          samples_s32.npy, samples_s64.npy, train.json) and $OUT/molecules.log.
# Unpack into .gpu-data/molecules/run/ (see scripts/gpu/molecules.READY); the weights are then
# copied (with the tokenizer) to src/svdd/domains/molecules/assets/moses-selfies/.
set -u
OUT=${OUT:?set OUT}
WORK=$(mktemp -d)
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
{
  echo "molecules: start $(date -u +%FT%TZ)"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  timeout 450 python3 scripts/train_molecules.py --data .gpu-data/molecules --out "$WORK" \
      --device "${DEVICE:-cuda}" --time-budget "${TIME_BUDGET:-270}" --seed 0 \
      --num-samples "${NUM_SAMPLES:-10000}" --sample-steps 32,64 ${EXTRA_ARGS:-}
  echo "molecules: train exit $?"
  tar -czf "$OUT/molecules.tar.gz" -C "$WORK" .
  ls -la "$WORK" "$WORK/moses-selfies" 2>/dev/null
  echo "molecules: end $(date -u +%FT%TZ)"
} > "$OUT/molecules.log" 2>&1
rm -rf "$WORK"
