"""Losses between a predicted distribution (logits over the label set) and a soft target.

Every loss here is per example: ``logits [B, C]`` and ``targets [B, C]`` (rows sum to 1) give
``[B]``, computed in float32 whatever the logits' dtype. Optional ``class_weights [C]`` scale each
class's term of the sum over classes, so with one-hot targets the soft cross-entropy is the usual
class-weighted cross-entropy. Terms with a zero target contribute nothing (``0 log 0 = 0``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

LossFn = Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]


def _weighted_sum(terms: jax.Array, class_weights: jax.Array | None) -> jax.Array:
  """Sums ``terms [B, C]`` over classes, each class scaled by ``class_weights [C]`` when given."""
  if class_weights is not None:
    terms = terms * class_weights.astype(jnp.float32)
  return terms.sum(axis=-1)


def soft_cross_entropy(
  logits: jax.Array, targets: jax.Array, class_weights: jax.Array | None = None
) -> jax.Array:
  """``-sum_c w_c t_c log q_c`` with ``q = softmax(logits)``; [B] in nats."""
  log_q = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return _weighted_sum(-targets.astype(jnp.float32) * log_q, class_weights)


def kl_divergence(logits: jax.Array, targets: jax.Array, class_weights: jax.Array | None = None) -> jax.Array:
  """``KL(t || q) = sum_c w_c t_c (log t_c - log q_c)``; [B] in nats, 0 where ``q == t``.

  It equals the soft cross-entropy minus the target's entropy, so both have the same gradient; KL
  reads as a distance (0 at a perfect fit).
  """
  t = targets.astype(jnp.float32)
  log_q = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return _weighted_sum(jax.scipy.special.xlogy(t, t) - t * log_q, class_weights)


def js_divergence(logits: jax.Array, targets: jax.Array, class_weights: jax.Array | None = None) -> jax.Array:
  """Jensen-Shannon divergence in bits (base 2, in [0, 1] unweighted), as perax.distributions.metrics reports it.

  ``JS = (KL(t || m) + KL(q || m)) / 2`` with ``m = (t + q) / 2``.
  """
  t = targets.astype(jnp.float32)
  q = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  m = 0.5 * (t + q)
  # xlogy(x, x / m) is 0 where x == 0 (m > 0 wherever x > 0).
  terms = 0.5 * (
    jax.scipy.special.xlogy(t, t)
    - jax.scipy.special.xlogy(t, m)
    + jax.scipy.special.xlogy(q, q)
    - jax.scipy.special.xlogy(q, m)
  )
  return _weighted_sum(terms, class_weights) / math.log(2.0)


LOSSES: dict[str, LossFn] = {
  'kl': kl_divergence,
  'soft_ce': soft_cross_entropy,
  'js': js_divergence,
}


def get_loss(name: str) -> LossFn:
  """The per-example loss called ``name`` (one of :data:`LOSSES`)."""
  if name not in LOSSES:
    raise ValueError(f'unknown loss {name!r}; expected one of {sorted(LOSSES)}')
  return LOSSES[name]


def class_weights_from_targets(targets: np.ndarray, power: float = 1.0) -> np.ndarray:
  """Inverse-frequency class weights from training targets, normalised to mean 1.

  Args:
    targets: [N, C] training target distributions (rows sum to 1).
    power: 1 for inverse frequency, 0.5 for its square root, 0 for uniform weights.

  Returns:
    [C] float32 weights ``(f_c)^-power`` scaled to mean 1, where ``f_c`` is the mean target mass of
    class c; a class with no mass gets the largest weight of the others (never infinity).
  """
  targets = np.asarray(targets, dtype=np.float64)
  if targets.ndim != 2 or not len(targets):
    raise ValueError(f'targets must be a non-empty [N, C] array, got shape {targets.shape}')
  freq = targets.mean(axis=0)
  present = freq > 0
  if not present.any():
    raise ValueError('targets carry no probability mass')
  weights = np.zeros_like(freq)
  weights[present] = freq[present] ** -power
  weights[~present] = weights[present].max()
  return (weights / weights.mean()).astype(np.float32)
