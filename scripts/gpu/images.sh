#!/usr/bin/env bash
# Images domain: digits DDPM (diffusers UNet2DModel layout, trained without diffusers),
# reward + evaluation classifiers, and the SVDD-MC value network for classifier:0.
# Inputs: .gpu-data/images/digits16.pt (python scripts/prepare_images.py).
# CPU smoke test: IMAGES_DEVICE=cpu IMAGES_ARGS=--smoke OUT=/tmp/o bash scripts/gpu/images.sh
# Outputs: $OUT/images.tar.gz (unpack into src/svdd/domains/images/assets/) and $OUT/images.log.
set -u
OUT="${OUT:-runs/gpu-out}"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
{
  echo "images job start $(date -u +%FT%TZ)"
  python3 scripts/train_images.py --data .gpu-data/images --out "$WORK" --device "${IMAGES_DEVICE:-cuda}" --seed 0 \
      --time-budget 270 --value --value-rollouts 2048 --value-num-steps 50 --value-train-steps 3000 ${IMAGES_ARGS:-}
  echo "train exit code $?"
  tar -czf "$OUT/images.tar.gz" -C "$WORK" .
  ls -la "$WORK" "$OUT/images.tar.gz"
  echo "images job end $(date -u +%FT%TZ)"
} > "$OUT/images.log" 2>&1
