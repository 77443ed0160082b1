#!/usr/bin/env bash
# Train the RNA domain's models on the GPU machine: utr-random, utr-genomic (masked diffusion,
# 50 nt) and the SVDD-MC value network for `mrl` on utr-random, then a one-seed evaluation.
# Inputs: .gpu-data/rna/ (from `python scripts/prepare_rna.py`: dhs.pt, oracle/{mrl,mrl-eval}.pt).
# Outputs: $OUT/rna.tar.gz (utr-random/, utr-genomic/ {config.json, model.safetensors},
#          values/utr-random-mrl/ {value.json, value.safetensors}, train.json) and $OUT/rna.log.
# Unpack into src/svdd/domains/rna/assets/ (see scripts/gpu/rna.READY).
set -u
OUT=${OUT:?set OUT}
WORK=$(mktemp -d)
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
{
  echo "rna: start $(date -u +%FT%TZ)"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  timeout 460 python3 scripts/train_rna.py --data .gpu-data/rna --out "$WORK" \
      --device "${DEVICE:-cuda}" --time-budget "${TIME_BUDGET:-360}" --seed 0 ${EXTRA_ARGS:-}
  echo "rna: train exit $?"
  tar -czf "$OUT/rna.tar.gz" -C "$WORK" .
  ls -laR "$WORK"
  echo "rna: end $(date -u +%FT%TZ)"
} > "$OUT/rna.log" 2>&1
rm -rf "$WORK"
