"""Emotion distributions from votes: counting, combining human and synthetic evidence, levels, metrics.

Modules: counting (votes -> counts -> distributions, entropy, majority), combining (pooled, mixture,
Dirichlet posterior, kappa by empirical Bayes), evidence (synthetic evidence from score or vote
tables), levels (THE ambiguity level definition), build (the distributions table and its JSON),
metrics (predicted against reference distributions).
"""

from perax.distributions.build import (
  NO_HUMAN_VOTE,
  NO_HUMAN_VOTE_IN_SET,
  SKIP_SYNTHETIC_WITH_SCORES,
  build_distributions,
  describe_kappa,
  format_summary,
  human_targets,
  read_level_definition,
  write_distributions,
)
from perax.distributions.combining import (
  COMBINE_MODES,
  KAPPA_BOUNDS,
  KAPPA_PS_FLOOR,
  combine_evidence,
  dirichlet_posterior,
  fit_kappa,
  kappa_log_likelihood,
  mixture,
  pooled,
)
from perax.distributions.counting import (
  SKIP_INVALID,
  SKIP_OUTSIDE,
  SKIP_UNKNOWN_UTT,
  TIE_POLICIES,
  TIE_TOLERANCE,
  majority,
  normalized_entropy,
  resolve_label_set,
  to_distribution,
  top_labels,
  vote_counts,
)
from perax.distributions.evidence import align, scores_distribution, synthetic_evidence
from perax.distributions.levels import (
  ALL,
  LEVELS,
  LevelDefinition,
  ambiguity_levels,
  fit_levels,
  tertile_edges,
)
