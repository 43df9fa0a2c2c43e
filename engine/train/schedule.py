"""Pure schedule functions of the training loop: learning rate per update, epoch of a step."""

from __future__ import annotations

import math


def lr_at(
    step: int,
    base_lr: float,
    warmup_steps: int,
    total_steps: int,
    final_fraction: float = 0.1,
    restart_period: int = 0,
    restart_mult: float = 1.0,
) -> float:
    """Learning rate of the update with 0-based index ``step``; same units as ``base_lr``.

    Linear warm-up from ``base_lr / warmup_steps`` to ``base_lr`` over the first
    ``warmup_steps`` updates, then

    * ``restart_period == 0``: half a cosine from ``base_lr`` down towards
      ``final_fraction * base_lr`` at ``total_steps``;
    * ``restart_period = T_0 > 0``: cosine annealing with warm restarts (SGDR; Loshchilov &
      Hutter 2017, ICLR, eq. 5): cycle ``i`` lasts ``T_i = T_0 * restart_mult**i`` updates,
      within it the rate is ``f + (1 - f) * (1 + cos(pi * t_cur / T_i)) / 2`` times ``base_lr``
      (``f = final_fraction``, ``t_cur`` updates since the cycle began), and it jumps back to
      ``base_lr`` at each restart.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = step - warmup_steps
    if restart_period > 0:
        if restart_mult == 1.0:
            period = float(restart_period)
            t_cur = t % restart_period
        else:
            period, t_cur = float(restart_period), float(t)
            while t_cur >= period:  # O(log t) cycles
                t_cur -= period
                period *= restart_mult
        progress = t_cur / period
    elif total_steps <= warmup_steps:
        return base_lr
    else:
        progress = min(t / (total_steps - warmup_steps), 1.0)
    return base_lr * (
        final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
    )


def epoch_of(step: int, steps_per_epoch: int) -> int:
    """0-based epoch that the ``step``-th update (1-based count) belongs to; 0 for step 0."""
    return max(step - 1, 0) // steps_per_epoch
