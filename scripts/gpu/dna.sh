#!/usr/bin/env bash
# Train the DNA domain's models on the GPU machine (two HepG2 oracles, the masked-diffusion
# model, pretrained/SVDD-PM/best-of-N check samples, the SVDD-MC value network).
# Inputs: .gpu-data/dna/dhs.npz (from `python scripts/prepare_dna.py`).
# Outputs: $OUT/dna.tar.gz (dhs-mdlm/, oracle_guidance/, oracle_evaluation/, value_hepg2/,
#          samples_*.npy, train.json) and $OUT/dna.log.
# Unpack into src/svdd/domains/dna/assets/gpu-run/ (see scripts/gpu/dna.READY); if the machine had no
# safetensors, run `python scripts/train_dna.py --convert src/svdd/domains/dna/assets` after.
set -u
OUT=${OUT:?set OUT}
WORK=$(mktemp -d)
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
{
  echo "dna: start $(date -u +%FT%TZ)"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  timeout 455 python3 scripts/train_dna.py --data .gpu-data/dna --out "$WORK" \
      --device "${DEVICE:-cuda}" --seed 0 --diffusion-budget "${TIME_BUDGET:-180}" --deadline 400 ${EXTRA_ARGS:-}
  echo "dna: train exit $?"
  tar -czf "$OUT/dna.tar.gz" -C "$WORK" .
  ls -la "$WORK"
  echo "dna: end $(date -u +%FT%TZ)"
} > "$OUT/dna.log" 2>&1
rm -rf "$WORK"
