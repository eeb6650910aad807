"""The optimizer: AdamW on a learning-rate schedule with warmup, after global-norm clipping."""

from __future__ import annotations

import ml_collections
import optax

LR_SCHEDULES: tuple[str, ...] = ("cosine", "linear", "constant")


def learning_rate_schedule(train: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup from 0 to ``learning_rate`` over ``warmup_steps``, then ``lr_schedule``:

    - "cosine": cosine decay to ``learning_rate * final_lr_fraction`` at ``steps`` (Loshchilov &
      Hutter 2017);
    - "linear": linear decay to the same end value;
    - "constant": ``learning_rate`` after the warmup.
    """
    name = train.lr_schedule
    peak, warmup = train.learning_rate, train.warmup_steps
    end = peak * train.final_lr_fraction
    decay_steps = max(train.steps - warmup, 1)
    if name == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak)
    elif name == "linear":
        after = optax.linear_schedule(peak, end, decay_steps)
    else:
        after = optax.constant_schedule(peak)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """``clip_by_global_norm`` followed by AdamW (decoupled weight decay) on the schedule."""
    return optax.chain(
        optax.clip_by_global_norm(train.grad_clip),
        optax.adamw(
            learning_rate_schedule(train),
            b1=train.adam_b1,
            b2=train.adam_b2,
            eps=train.adam_eps,
            weight_decay=train.weight_decay,
        ),
    )
