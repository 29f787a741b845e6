"""The estimates compared in the studies ("conditions") and how human and proxy evidence combine.

human: the human votes alone; proxy: the proxy alone; pooled, mixture, dirichlet: human + proxy
combined by :func:`perax.distributions.combine_evidence`. The Dirichlet strength kappa is fitted once
by empirical Bayes on the human votes of one split (or given), used everywhere, and reported with
what it was fitted on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from perax import distributions
from perax.analysis.evidence import Evidence
from perax.distributions.levels import ALL

HUMAN = 'human'
PROXY = 'proxy'
COMBINED = ('pooled', 'mixture', 'dirichlet')
CONDITION_NOTES = {
  HUMAN: 'the human votes alone',
  PROXY: 'the proxy alone',
  'pooled': 'human + proxy votes pooled, each proxy vote weighted by w',
  'mixture': 'lambda * human + (1 - lambda) * proxy distribution',
  'dirichlet': 'posterior mean under a Dirichlet(kappa * proxy) prior',
}


@dataclasses.dataclass(frozen=True)
class Combination:
  """How human and proxy evidence are combined (see perax.distributions.combine_evidence).

  Attributes:
    synthetic_weight, mixture_lambda, kappa: the parameters.
    kappa_fit: what a fitted kappa was fitted on ({'votes': words, 'n_utterances': int}), or None
      when kappa was given.
  """

  synthetic_weight: float = 1.0
  mixture_lambda: float = 0.5
  kappa: float | None = None
  kappa_fit: Mapping | None = None

  def estimate(self, condition: str, n_h: np.ndarray, n_s: np.ndarray, p_s: np.ndarray) -> np.ndarray:
    """[N, C] the distribution of ``condition`` from human counts and proxy evidence."""
    if condition == HUMAN:
      return distributions.to_distribution(n_h)
    if condition == PROXY:
      return p_s
    p, _ = distributions.combine_evidence(
      condition,
      n_h,
      n_s,
      p_s,
      synthetic_weight=self.synthetic_weight,
      mixture_lambda=self.mixture_lambda,
      kappa=self.kappa,
    )
    return p

  def describe_kappa(self) -> str:
    """kappa in words with what it was fitted on (see perax.distributions.describe_kappa)."""
    return distributions.describe_kappa(self.kappa, self.kappa_fit)


def fitted_combination(
  evidence: Evidence,
  kappa_split: str | None,
  synthetic_weight: float,
  mixture_lambda: float,
  kappa: float | None,
) -> Combination:
  """The combination, with kappa fitted on the human votes of split ``kappa_split`` if not given.

  ``kappa_split`` None or 'all' (or evidence without splits) fits on every analysed utterance.
  """
  if kappa is not None:
    return Combination(synthetic_weight, mixture_lambda, kappa)
  chosen = np.ones(len(evidence.utt_ids), bool)
  where = 'every analysed utterance'
  if kappa_split not in (None, ALL) and evidence.split is not None:
    chosen = evidence.split == kappa_split
    where = f'the analysed utterances of split {kappa_split}'
  fitted = distributions.fit_kappa(evidence.n_h[chosen], evidence.p_s[chosen])
  record = {'votes': f'the human votes of {where}', 'n_utterances': int(chosen.sum())}
  return Combination(synthetic_weight, mixture_lambda, fitted, record)
