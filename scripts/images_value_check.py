"""Held-out check of the shipped SVDD-MC value for ``classifier:0``: correlation between the
value at intermediate states of *fresh* pretrained rollouts and the reward of their final
samples, next to the SVDD-PM value r(x0_hat) on the same states.

    python scripts/images_value_check.py --num-rollouts 128 --seed 123
"""

from __future__ import annotations

import argparse
import json
import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-rollouts", type=int, default=128)
    p.add_argument("--num-steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=123)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import svdd.domains.images as images
    from svdd.algorithms._common import Run
    from svdd.algorithms.ancestral import rollout
    from svdd.values.learned import load_value

    process = images.DOMAIN.load_process()
    reward = images.DOMAIN.make_reward("classifier:0")
    value = load_value(images.VALUE_PATHS["classifier:0"])
    with torch.no_grad():
        x0, trajectory = rollout(Run(process, reward), args.num_rollouts, args.num_steps,
                                 torch.Generator().manual_seed(args.seed), record_states=True)
        final = reward(x0)
        rows = []
        for k in range(0, len(trajectory), max(1, len(trajectory) // 6)):
            t, x = trajectory[k]
            t = torch.tensor(float(t))
            mc = value(x, t)
            pm = reward(process.predict_x0(x, t)) if float(t) > 0 else reward(x)
            rows.append({"t": float(t), "corr_mc": float(torch.corrcoef(torch.stack([mc, final]))[0, 1]),
                         "corr_pm": float(torch.corrcoef(torch.stack([pm, final]))[0, 1])})
            print(json.dumps(rows[-1]))


if __name__ == "__main__":
    main()
