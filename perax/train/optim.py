"""AdamW with linear warmup, cosine decay and global-norm clipping, for the trainable parameters."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(
  peak: float, total_steps: int, warmup_steps: int, end_factor: float = 0.1
) -> optax.Schedule:
  """0 -> ``peak`` linearly over ``warmup_steps``, then cosine down to ``end_factor * peak`` at
  ``total_steps``."""
  if total_steps < 1:
    raise ValueError(f'total_steps must be >= 1, got {total_steps}')
  warmup_steps = min(warmup_steps, total_steps - 1)
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=peak,
    warmup_steps=warmup_steps,
    decay_steps=total_steps,
    end_value=end_factor * peak,
  )


def _decay_mask(params):
  """Weight decay applies to matrices (kernels, embeddings), not to biases or norm scales."""
  return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(
  *,
  learning_rate: float,
  total_steps: int,
  warmup_steps: int,
  weight_decay: float = 0.01,
  clip_norm: float = 1.0,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  end_factor: float = 0.1,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW behind global-norm clipping (``clip_norm <= 0`` disables clipping).

  Returns:
    (the transformation, its learning-rate schedule, for logging the rate per step).
  """
  schedule = learning_rate_schedule(learning_rate, total_steps, warmup_steps, end_factor)
  adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=_decay_mask)
  tx = optax.chain(optax.clip_by_global_norm(clip_norm), adamw) if clip_norm > 0 else adamw
  return tx, schedule
