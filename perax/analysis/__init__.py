"""Validating proxies against humans: bootstrap statistics, paired tests, the alignment and
sparse-vs-dense studies, plots and reports.

Modules: evidence (inputs and counted evidence), conditions (the estimates compared; kappa),
bootstrap (percentile bootstrap over utterances), paired_tests (Wilcoxon), alignment,
sparse_dense (drawing k raters) and sparse_dense_study, writers (CSV / Markdown / JSON tables),
sections (the report's sections in words), job (:func:`analyze`), plots, report.
Ambiguity levels come from :mod:`perax.distributions.levels` only.
"""

from perax.analysis.alignment import ALIGNMENT_METRICS, ROW_COLUMNS, Alignment, alignment
from perax.analysis.bootstrap import (
  BOOTSTRAP_CHUNK,
  PER_ITEM,
  Ingredients,
  bootstrap_metrics,
  bootstrap_weights,
  ingredients,
  percentile_interval,
  point_metrics,
  score_condition,
  weighted_metrics,
)
from perax.analysis.conditions import (
  COMBINED,
  CONDITION_NOTES,
  HUMAN,
  PROXY,
  Combination,
  fitted_combination,
)
from perax.analysis.evidence import (
  Evidence,
  Inputs,
  crema_d_inputs,
  gather_evidence,
  is_votes_table,
  proxy_votes,
  subsample,
)
from perax.analysis.job import Outputs, Settings, analyze
from perax.analysis.paired_tests import WILCOXON_COLUMNS, WILCOXON_METRICS, wilcoxon, wilcoxon_rows
from perax.analysis.sections import METRIC_WORDS, figure_caption, overview_section, report_sections
from perax.analysis.sparse_dense_study import (
  LEVEL_BY,
  LEVEL_BY_ALL_VOTES,
  LEVEL_BY_REFERENCE,
  SPARSE_COLUMNS,
  SPARSE_METRICS,
  SparseDense,
  sparse_vs_dense,
)
from perax.analysis.writers import interval_cell, pivot, write_rows
