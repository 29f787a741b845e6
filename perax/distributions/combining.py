"""Combining human counts with synthetic evidence into one distribution per utterance (pure numpy).

Human counts n_h [N, C] and synthetic evidence p_s [N, C] (or counts n_s), :func:`combine_evidence`:
  pooled:    p = (n_h + w n_s) / (N_h + w N_s)
  mixture:   p = lambda p_h + (1 - lambda) p_s
  dirichlet: p = (n_h + kappa p_s) / (N_h + kappa), kappa by empirical Bayes (:func:`fit_kappa`).
NaN rows (no evidence on a side) pass through as each function's docstring says.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.optimize

from perax.distributions.counting import to_distribution

COMBINE_MODES = ('none', 'pooled', 'mixture', 'dirichlet')

# Synthetic probabilities are floored at this value inside the kappa likelihood only, so that a
# human vote for a label the proxy rules out does not make the likelihood -inf for every kappa.
KAPPA_PS_FLOOR = 1e-6
KAPPA_BOUNDS = (1e-3, 1e4)


def pooled(n_h: np.ndarray, n_s: np.ndarray, weight: float) -> np.ndarray:
  """(n_h + w n_s) / (N_h + w N_s) for counts [N, C]; NaN where there is no evidence at all."""
  if weight < 0:
    raise ValueError(f'synthetic weight must be >= 0, got {weight}')
  return to_distribution(np.asarray(n_h, np.float64) + weight * np.asarray(n_s, np.float64))


def mixture(p_h: np.ndarray, p_s: np.ndarray, lam: float) -> np.ndarray:
  """lambda p_h + (1 - lambda) p_s for distributions [N, C]; a NaN side leaves the other one."""
  if not 0.0 <= lam <= 1.0:
    raise ValueError(f'mixture lambda must be in [0, 1], got {lam}')
  p_h, p_s = np.asarray(p_h, np.float64), np.asarray(p_s, np.float64)
  mixed = lam * p_h + (1.0 - lam) * p_s
  mixed = np.where(np.isnan(p_h), p_s, mixed)
  return np.where(np.isnan(p_s), p_h, mixed)


def dirichlet_posterior(n_h: np.ndarray, p_s: np.ndarray, kappa: float) -> np.ndarray:
  """(n_h + kappa p_s) / (N_h + kappa): the posterior mean under a Dirichlet(kappa p_s) prior.

  Rows with no human votes take p_s; rows without synthetic evidence (NaN p_s) take the human
  distribution n_h / N_h. kappa = inf gives p_s wherever p_s exists.
  """
  if not kappa >= 0:
    raise ValueError(f'kappa must be >= 0, got {kappa}')
  n_h, p_s = np.asarray(n_h, np.float64), np.asarray(p_s, np.float64)
  total_h = n_h.sum(-1, keepdims=True)
  if math.isinf(kappa):
    posterior = p_s
  else:
    with np.errstate(invalid='ignore', divide='ignore'):
      posterior = (n_h + kappa * p_s) / (total_h + kappa)
  posterior = np.where(total_h > 0, posterior, p_s)
  return np.where(np.isnan(p_s), to_distribution(n_h), posterior)


def kappa_log_likelihood(log_kappa: np.ndarray | float, n_h: np.ndarray, p_s: np.ndarray) -> np.ndarray:
  """Leave-one-vote-out log-likelihood of the human votes under the Dirichlet combination.

  Each human vote for label c of utterance i is predicted from the other votes:
  (n_h[i, c] - 1 + kappa p_s[i, c]) / (N_h[i] - 1 + kappa); the result sums the log over all votes
  (counts act as numbers of unit votes; a fractional count c < 1 leaves max(c - 1, 0)). Rows with no
  human votes or NaN p_s do not contribute; p_s is floored at KAPPA_PS_FLOOR and renormalised.

  Args:
    log_kappa: scalar or [K] values of log kappa.
    n_h: human counts [N, C].
    p_s: synthetic distributions [N, C].

  Returns:
    The summed log-likelihood, shape of ``log_kappa``.
  """
  n_h, p_s = np.asarray(n_h, np.float64), np.asarray(p_s, np.float64)
  rows = (n_h.sum(-1) > 0) & ~np.isnan(p_s).any(-1)
  n_h, p_s = n_h[rows], np.maximum(p_s[rows], KAPPA_PS_FLOOR)
  p_s = p_s / p_s.sum(-1, keepdims=True)
  kappa = np.exp(np.asarray(log_kappa, np.float64))[..., None, None]
  held_out = np.maximum(n_h - 1.0, 0.0)
  others = np.maximum(n_h.sum(-1, keepdims=True) - 1.0, 0.0)
  log_p = np.log(held_out + kappa * p_s) - np.log(others + kappa)
  return np.where(n_h > 0, n_h * log_p, 0.0).sum((-2, -1))


def fit_kappa(n_h: np.ndarray, p_s: np.ndarray, bounds: tuple[float, float] = KAPPA_BOUNDS) -> float:
  """kappa maximising :func:`kappa_log_likelihood`, by a bounded 1-D search on log kappa.

  A proxy that predicts the held-out human votes well pushes kappa up (to the upper bound where it
  is as good as the votes themselves), a poor one down; both bounds are legitimate answers.

  Raises:
    ValueError: no utterance has both a human vote and a synthetic distribution.
  """
  n_h, p_s = np.asarray(n_h, np.float64), np.asarray(p_s, np.float64)
  if not ((n_h.sum(-1) > 0) & ~np.isnan(p_s).any(-1)).any():
    raise ValueError('fit_kappa needs utterances with both human votes and synthetic evidence')
  low, high = math.log(bounds[0]), math.log(bounds[1])
  result = scipy.optimize.minimize_scalar(
    lambda log_kappa: -float(kappa_log_likelihood(log_kappa, n_h, p_s)),
    bounds=(low, high),
    method='bounded',
    options={'xatol': 1e-4},
  )
  # The bounded search never evaluates the bounds themselves; a monotone likelihood belongs there.
  candidates = [low, float(result.x), high]
  values = kappa_log_likelihood(np.array(candidates), n_h, p_s)
  return float(math.exp(candidates[int(np.argmax(values))]))


def combine_evidence(
  mode: str,
  n_h: np.ndarray,
  n_s: np.ndarray | None = None,
  p_s: np.ndarray | None = None,
  *,
  synthetic_weight: float = 1.0,
  mixture_lambda: float = 0.5,
  kappa: float | None = None,
  smoothing: float = 0.0,
) -> tuple[np.ndarray, float | None]:
  """Combines human counts with synthetic evidence into distributions [N, C].

  Args:
    mode: 'none' (human only), 'pooled', 'mixture' or 'dirichlet' (formulas: module docstring).
    n_h: human counts [N, C].
    n_s: synthetic counts [N, C]; pooled needs them (derive them from scores with
      :func:`synthetic_evidence`).
    p_s: synthetic distributions [N, C] (NaN rows: none); defaults to n_s normalised.
    synthetic_weight: w, the weight of one synthetic vote (pooled).
    mixture_lambda: lambda, the weight of the human distribution (mixture).
    kappa: the Dirichlet prior strength; None fits it with :func:`fit_kappa`.
    smoothing: additive smoothing of the human counts (and of the pooled counts) before combining.

  Returns:
    p [N, C] (NaN rows where there is no evidence), and kappa (dirichlet) or None.
  """
  if mode not in COMBINE_MODES:
    raise ValueError(f'combine must be one of {COMBINE_MODES}, got {mode!r}')
  n_h = np.asarray(n_h, np.float64)
  if mode == 'none':
    return to_distribution(n_h, smoothing), None
  if p_s is None:
    if n_s is None:
      raise ValueError(f'combine={mode!r} needs synthetic counts or distributions')
    p_s = to_distribution(n_s)
  if mode == 'pooled':
    if n_s is None:
      raise ValueError('combine=pooled needs synthetic counts')
    pooled_counts = n_h + synthetic_weight * np.asarray(n_s, np.float64)
    return to_distribution(pooled_counts, smoothing), None
  if mode == 'mixture':
    return mixture(to_distribution(n_h, smoothing), p_s, mixture_lambda), None
  if kappa is None:
    kappa = fit_kappa(n_h, p_s)
  smoothed = np.where(n_h.sum(-1, keepdims=True) > 0, n_h + smoothing, n_h)
  return dirichlet_posterior(smoothed, p_s, kappa), kappa
