"""Prepare the digits training data for the images GPU job.

scikit-learn's digits (1,797 greyscale 8×8 images, 16 grey levels, shipped inside the
scikit-learn wheel, so offline) are upscaled to 16×16 (bilinear, antialiased) and stored as
uint8 with their labels and a fixed split:

    split 0 ("A", 750)  DDPM + reward classifier      split 1 ("B", 750)  DDPM + evaluation classifier
    split 2 ("test", 297) held out: classifier accuracies are measured here

The reward classifier and the evaluation classifier never see the same images, so reward
hacking against the first shows up in the second. Output: ``.gpu-data/images/digits16.pt``
(a dict of tensors, loadable with ``torch.load(weights_only=True)``; the GPU machine has no
scikit-learn).

    python scripts/prepare_images.py [--out .gpu-data/images]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

IMAGE_SIZE = 16
SPLIT_SIZES = (750, 750, 297)


def load_digits16(seed: int = 0) -> dict:
    """Digits as ``images`` uint8 (N, 1, 16, 16) in 0..255, ``labels`` (N,), ``split`` (N,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0          # (N, 1, 8, 8) in [0, 1]
    x = torch.nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                                        align_corners=False, antialias=True).clamp(0, 1)
    images = (x * 255).round().to(torch.uint8)
    labels = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    split = torch.empty(len(labels), dtype=torch.long)
    a, b, _ = SPLIT_SIZES
    split[perm[:a]], split[perm[a:a + b]], split[perm[a + b:]] = 0, 1, 2
    return {"images": images, "labels": labels, "split": split}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=".gpu-data/images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = load_digits16(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "digits16.pt"
    torch.save(data, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    meta = {"file": path.name, "sha256": digest, "num_images": int(len(data["labels"])),
            "image_size": IMAGE_SIZE, "split_sizes": list(SPLIT_SIZES), "seed": args.seed}
    (out / "digits16.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
