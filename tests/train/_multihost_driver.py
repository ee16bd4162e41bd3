"""``python tests/train/_multihost_driver.py train ...``: the CLI with one extra reward component,
``token_hash`` (a function of the sampled tokens, so rewards differ within groups and equal
rewards mean equal samples). Used by test_multihost.py through scripts/launch_local.sh."""

import sys

import numpy as np

from toolrl_jax.cli import main
from toolrl_jax.train.rewards import REWARD_COMPONENTS, ComponentScore


@REWARD_COMPONENTS.register("token_hash")
def token_hash(ctx, cfg) -> ComponentScore:
    traj = ctx.trajectory
    mask = np.asarray(traj.loss_mask) > 0
    ids = np.where(mask, np.asarray(traj.tokens), 0).astype(np.int64)
    return ComponentScore(((ids.sum(1) % 7) / 6.0).astype(np.float32))


if __name__ == "__main__":
    sys.exit(main())
