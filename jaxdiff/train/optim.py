"""The optimizer: AdamW with linear warmup, cosine decay and global-norm gradient clipping."""

from __future__ import annotations

import ml_collections
import optax


def learning_rate_schedule(train: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup from 0 to ``learning_rate`` over ``warmup_steps``, then cosine decay to
    ``learning_rate * final_lr_fraction`` at ``steps`` (Loshchilov & Hutter 2017)."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=train.learning_rate,
        warmup_steps=train.warmup_steps,
        decay_steps=max(train.steps, train.warmup_steps + 1),
        end_value=train.learning_rate * train.final_lr_fraction,
    )


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
