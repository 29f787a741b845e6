"""The analysis job: tables in, both studies run, tables, plots, summary.json and the report out.

Levels: the run's one :class:`perax.distributions.LevelDefinition`, given in the settings (e.g. read
from the run's distributions.json) or, when none is given, fitted here once as the tertiles of the
human entropy of split ``levels_from``; the alignment study and the sparse-vs-dense study both apply
it. kappa is fitted once on the human votes of split ``levels_from`` (or given) and reported with
what it was fitted on.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping

import numpy as np

from perax import distributions
from perax.analysis import plots, sections, sparse_dense
from perax.analysis import report as report_lib
from perax.analysis.alignment import ALIGNMENT_METRICS, ROW_COLUMNS, alignment
from perax.analysis.conditions import HUMAN, PROXY, fitted_combination
from perax.analysis.evidence import Inputs, gather_evidence
from perax.analysis.paired_tests import WILCOXON_COLUMNS
from perax.analysis.sparse_dense_study import LEVEL_BY_REFERENCE, SPARSE_COLUMNS, sparse_vs_dense
from perax.analysis.writers import write_rows
from perax.core import jsonio, log
from perax.data import labels as labels_lib
from perax.distributions import metrics
from perax.distributions.levels import LEVELS, LevelDefinition, fit_levels

STAGE = 'analysis'


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything the analysis needs besides the tables (launch/analyze.py's flags).

  Attributes:
    label_set: the label set's name (or comma-separated labels).
    levels_from: split whose human votes fit kappa and, without ``levels``, whose human-entropy
      tertiles set the level edges ('all' or None: every utterance).
    levels: the run's level definition, applied as given (None: fitted here from ``levels_from``).
    sparse_k: the k of the sparse-vs-dense study (empty: no study).
    repeats: draws per k.
    bootstrap: bootstrap resamples.
    confidence: CI coverage.
    seed: seeds bootstrap and draws.
    synthetic_weight, mixture_lambda, kappa: the combination (kappa None: fitted).
    dense_reference: 'remainder' or 'all' when the human votes are the dense reference.
    sparse_level_by: 'reference' (default: the entropy of the dense reference scored against) or
      'all_votes' (the older convention), see perax.analysis.sparse_dense_study.
    examples_per_level: panels per level in the example plot.
  """

  label_set: str
  levels_from: str | None = 'train'
  levels: LevelDefinition | None = None
  sparse_k: tuple[int, ...] = (1, 2, 3, 4, 5)
  repeats: int = 5
  bootstrap: int = 1000
  confidence: float = 0.95
  seed: int = 0
  synthetic_weight: float = 1.0
  mixture_lambda: float = 0.5
  kappa: float | None = None
  dense_reference: str = sparse_dense.REMAINDER
  sparse_level_by: str = LEVEL_BY_REFERENCE
  examples_per_level: int = 2


@dataclasses.dataclass(frozen=True)
class Outputs:
  """Paths written by :func:`analyze`, and the figures' captions in words."""

  tables: Mapping[str, Mapping[str, str]]
  plots: Mapping[str, str]
  summary: str
  report: report_lib.ReportPaths
  captions: Mapping[str, str] = dataclasses.field(default_factory=dict)


def _examples(
  utt_ids: np.ndarray, levels: np.ndarray, reference: np.ndarray, estimate: np.ndarray, per_level: int
) -> list[tuple[str, np.ndarray, np.ndarray]]:
  """Per level, the utterances at evenly spaced quantiles of JS divergence (typical to worst)."""
  js = metrics.js_divergence(reference, estimate)
  chosen = []
  for level in LEVELS:
    members = np.flatnonzero(levels == level)
    if not members.size:
      continue
    ranked = members[np.argsort(js[members], kind='stable')]
    picks = np.unique(np.linspace(0, len(ranked) - 1, per_level + 2)[1:-1].round().astype(int))
    chosen += [(f'{utt_ids[i]} ({level}, JS {js[i]:.3f})', reference[i], estimate[i]) for i in ranked[picks]]
  return chosen


def _alignment_reference_words(n_h: np.ndarray, separate: bool) -> str:
  """The alignment study's reference in words."""
  if separate:
    return report_lib.REFERENCE_WORDS[report_lib.DENSE_HUMAN]
  median = float(np.median(n_h.sum(-1)))
  return (
    f"the human distribution (the corpus's human votes, median {median:g} per utterance; "
    'no separate dense reference)'
  )


def analyze(inputs: Inputs, settings: Settings, out_dir: str, command: str = '') -> Outputs:
  """Runs both studies and writes tables (CSV, Markdown, JSON), plots (PNG), summary.json and the report.

  Args:
    inputs: the tables.
    settings: the analysis settings.
    out_dir: where everything goes (created).
    command: the command line, shown in the report.
  """
  started = time.time()
  os.makedirs(out_dir, exist_ok=True)
  label_set = labels_lib.get_label_set(settings.label_set)
  evidence = gather_evidence(
    inputs.human, inputs.proxy, label_set, inputs.reference, inputs.utterances, inputs.proxy_path
  )
  entropy = distributions.normalized_entropy(distributions.to_distribution(evidence.n_h))
  definition = settings.levels or fit_levels(entropy, evidence.split, split=settings.levels_from)
  levels = definition.levels(entropy)
  combination = fitted_combination(
    evidence, settings.levels_from, settings.synthetic_weight, settings.mixture_lambda, settings.kappa
  )
  log.info(
    f'analysing {len(evidence.utt_ids)} utterances; ambiguity levels: {definition.describe()}; '
    f'{combination.describe_kappa()}',
    stage=STAGE,
  )
  aligned = alignment(evidence, levels, combination, settings.bootstrap, settings.confidence, settings.seed)
  study = None
  if settings.sparse_k:
    study = sparse_vs_dense(
      evidence,
      inputs.human,
      label_set,
      combination,
      settings.sparse_k,
      settings.repeats,
      settings.bootstrap,
      settings.confidence,
      settings.seed,
      definition,
      settings.dense_reference,
      settings.sparse_level_by,
    )
  reference_words = _alignment_reference_words(evidence.n_h, evidence.n_ref is not None)

  written = {
    'alignment': write_rows(
      aligned.rows,
      ROW_COLUMNS,
      out_dir,
      'alignment',
      f'Alignment of each condition with {reference_words}, by ambiguity level',
    ),
    'sparse_dense': write_rows(
      study.rows if study else [],
      SPARSE_COLUMNS,
      out_dir,
      'sparse_dense',
      f'Sparse human votes with and without the proxy, against {study.reference_words}, by k and '
      f'ambiguity level ({study.level_words})'
      if study
      else 'Sparse versus dense: not run (no feasible k)',
    ),
    'wilcoxon': write_rows(
      aligned.wilcoxon + (study.wilcoxon if study else []),
      WILCOXON_COLUMNS,
      out_dir,
      'wilcoxon',
      f'Paired Wilcoxon signed-rank tests against the human-only condition (alignment: against '
      f'{reference_words}' + (f'; sparse versus dense: against {study.reference_words})' if study else ')'),
    ),
  }
  edges = definition.edges
  level_rows = [
    dict(level=level, n=int((levels == level).sum()), entropy_from=low, entropy_to=high)
    for level, low, high in zip(LEVELS, (0.0,) + edges, edges + (1.0,))
  ]
  written['levels'] = write_rows(
    level_rows,
    ('level', 'n', 'entropy_from', 'entropy_to'),
    out_dir,
    'levels',
    f'Utterances per ambiguity level of the human distribution ({definition.describe()})',
  )

  reference_name = HUMAN if evidence.n_ref is None else 'reference'
  figures = {
    'ambiguity_histogram': plots.ambiguity_histogram(
      entropy, levels, edges, os.path.join(out_dir, 'ambiguity_histogram.png')
    ),
    'alignment_by_level': plots.metric_bars(
      aligned.rows, ALIGNMENT_METRICS, os.path.join(out_dir, 'alignment_by_level.png')
    ),
    'examples': plots.example_distributions(
      label_set.labels,
      _examples(
        evidence.utt_ids, levels, aligned.reference, aligned.estimates[PROXY], settings.examples_per_level
      ),
      (reference_name, PROXY),
      os.path.join(out_dir, 'examples.png'),
    ),
  }
  true = metrics.reference_labels(aligned.reference, 'first')
  predicted = distributions.majority(aligned.estimates[PROXY], 'first')
  num_labels = len(label_set)
  confusion = np.bincount(true * num_labels + predicted, minlength=num_labels**2).reshape(
    num_labels, num_labels
  )
  figures['majority_confusion'] = plots.confusion_matrix(
    confusion, label_set.labels, (reference_name, PROXY), os.path.join(out_dir, 'majority_confusion.png')
  )
  if study:
    for metric in ('js_divergence', 'kl'):
      figures[f'sparse_dense_{metric}'] = plots.sparse_dense_curves(
        study.rows, metric, os.path.join(out_dir, f'sparse_dense_{metric}.png')
      )

  summary = {
    'n_utterances': len(evidence.utt_ids),
    'left_out': dict(evidence.dropped),
    'votes_skipped': dict(evidence.skipped.counts),
    'label_set': label_set.name,
    'labels': list(label_set.labels),
    'levels': definition.to_json(),
    'levels_words': definition.describe(),
    'levels_given': settings.levels is not None,
    'edges': list(edges),
    'edges_from': definition.describe(),
    'level_counts': {level: int((levels == level).sum()) for level in LEVELS},
    'reference': evidence.n_ref is not None,
    'reference_words': reference_words,
    'kappa': combination.kappa,
    'kappa_fitted': settings.kappa is None,
    'kappa_fit': combination.kappa_fit,
    'kappa_words': combination.describe_kappa(),
    'settings': {**dataclasses.asdict(settings), 'levels': definition.to_json()},
    'sources': dict(inputs.sources),
    'sparse_dense': None
    if study is None
    else {
      'ks': list(study.ks),
      'n_utterances': study.n_items,
      'left_out': study.n_left_out,
      'reference': study.reference,
      'reference_words': study.reference_words,
      'level_by': study.level_by,
      'level_words': study.level_words,
      'notes': list(study.notes),
    },
  }
  captions = {name: sections.figure_caption(name, summary) for name in figures}
  summary['figure_captions'] = captions
  summary['seconds'] = time.time() - started
  summary_path = jsonio.write_json(os.path.join(out_dir, 'summary.json'), summary)
  report_sections = sections.report_sections(summary, aligned, study, figures, written, command, out_dir)
  paths = report_lib.write_report(out_dir, 'Proxy annotations against human distributions', report_sections)
  log.info(f'wrote {paths.html} and {paths.markdown} in {time.time() - started:.1f} s', stage=STAGE)
  return Outputs(written, figures, summary_path, paths, captions)
