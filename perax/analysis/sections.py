"""The analysis report's sections, written in words: every table names its reference in its caption.

The run's level definition is stated once (section "Ambiguity levels"); each fitted kappa is shown
with what it was fitted on; a corpus without a separate dense reference is never said to be scored
"against the dense reference".
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from perax.analysis import report as report_lib
from perax.analysis.alignment import ALIGNMENT_METRICS, Alignment
from perax.analysis.conditions import CONDITION_NOTES
from perax.analysis.sparse_dense_study import SparseDense
from perax.analysis.writers import pivot
from perax.core import jsonio
from perax.distributions.levels import ALL

METRIC_WORDS = {
  'js_divergence': 'JS divergence',
  'js_distance': 'JS distance',
  'kl': 'KL divergence',
  'bhattacharyya': 'Bhattacharyya coefficient',
  'total_variation': 'total variation',
  'r2': 'R^2',
  'entropy_pearson': 'Pearson correlation of entropies',
  'entropy_spearman': 'Spearman correlation of entropies',
  'accuracy': 'majority accuracy',
}

FIGURE_CAPTIONS = {
  'ambiguity_histogram': 'Normalised entropy of the human distributions, by ambiguity level',
  'alignment_by_level': 'Alignment metrics by ambiguity level, with confidence intervals',
  'examples': 'Example distributions: reference against proxy',
  'majority_confusion': 'Majority label of the reference against that of the proxy',
  'sparse_dense_js_divergence': 'JS divergence of sparse estimates by k',
  'sparse_dense_kl': 'KL divergence of sparse estimates by k',
}


def figure_caption(name: str, summary: Mapping | None = None) -> str:
  """A figure's caption in words (never its file slug), naming its reference when it has one."""
  caption = FIGURE_CAPTIONS.get(name, name.replace('_', ' ').capitalize())
  if summary is not None and name.startswith('sparse_dense_') and summary.get('sparse_dense'):
    caption += f', against {summary["sparse_dense"]["reference_words"]}'
  elif summary is not None and name in ('alignment_by_level', 'majority_confusion'):
    caption += f' ({summary["reference_words"]})'
  return caption


def _read_rows(path: str) -> list[dict]:
  return jsonio.read_json(path)


def report_sections(
  summary: Mapping,
  aligned: Alignment,
  study: SparseDense | None,
  figures: Mapping[str, str],
  written: Mapping[str, Mapping[str, str]],
  command: str,
  out_dir: str,
) -> list[report_lib.Section]:
  """The analysis report's sections: what ran, levels, alignment, tests, sparse-vs-dense, files."""
  settings = summary['settings']
  reference_words = summary['reference_words']
  facts = {
    'command': command or '(library call)',
    **summary['sources'],
    'utterances analysed': summary['n_utterances'],
    'utterances left out': ', '.join(f'{n} {why}' for why, n in summary['left_out'].items()) or 'none',
    'votes not counted': ', '.join(f'{n} x {why}' for why, n in summary['votes_skipped'].items()) or 'none',
    'label set': f'{summary["label_set"]} ({", ".join(summary["labels"])})',
    'kappa': summary['kappa_words'],
    'synthetic weight w': settings['synthetic_weight'],
    'mixture lambda': settings['mixture_lambda'],
    'bootstrap': f'{settings["bootstrap"]} resamples over utterances, '
    f'{settings["confidence"]:.0%} percentile intervals, seed {settings["seed"]}',
  }
  conditions = sorted({row['condition'] for row in aligned.rows})
  sections = [
    report_lib.Section(
      'What ran',
      paragraphs=(
        f'Alignment reference: {reference_words}.',
        'Conditions: ' + '; '.join(f'{c}: {CONDITION_NOTES[c]}' for c in conditions) + '.',
      ),
      facts=facts,
    ),
    report_lib.Section(
      'Ambiguity levels',
      paragraphs=(
        f'One level definition for the whole run: {summary["levels_words"]}. Low if e <= e1, medium '
        'if e1 < e <= e2, high otherwise, e the normalised entropy.',
      ),
      tables=(
        report_lib.Table(
          'Utterances per ambiguity level of the human distribution', _read_rows(written['levels']['json'])
        ),
      ),
      figures=(
        report_lib.Figure(figure_caption('ambiguity_histogram', summary), figures['ambiguity_histogram']),
      ),
    ),
    report_lib.Section(
      'Alignment',
      paragraphs=(
        'Each cell: the metric over all utterances of the level, and its bootstrap interval (n/a: no '
        'utterance). JS divergence (base 2), KL(reference || estimate) and total variation: lower is '
        'better; Bhattacharyya, R^2, entropy correlations and majority accuracy: higher is better.',
      ),
      tables=tuple(
        report_lib.Table(
          f'{METRIC_WORDS[metric]} by condition and level, against {reference_words}',
          pivot(aligned.rows, ('condition',), 'level', metric),
        )
        for metric in ALIGNMENT_METRICS
      ),
      figures=tuple(
        report_lib.Figure(figure_caption(name, summary), figures[name])
        for name in ('alignment_by_level', 'examples', 'majority_confusion')
      ),
    ),
  ]
  tests = _read_rows(written['wilcoxon']['json'])
  if tests:
    shown = [row for row in tests if row['metric'] == 'js_divergence' and row['level'] == ALL]
    sections.append(
      report_lib.Section(
        'Paired tests',
        paragraphs=(
          'Two-sided Wilcoxon signed-rank tests on per-utterance JS divergence against the human-only '
          'condition, over all levels (per level and for KL and BC in wilcoxon.csv); p-values are '
          'not adjusted for multiple comparisons.',
        ),
        tables=(
          report_lib.Table(
            'Wilcoxon tests of JS divergence against the human-only condition, all levels '
            f'(alignment: against {reference_words}'
            + (f'; sparse versus dense: against {study.reference_words})' if study else ')'),
            shown,
          ),
        ),
      )
    )
  if study is not None:
    shrinks = (
      ' (it shrinks as k grows, so compare conditions at the same k)'
      if study.reference == 'remainder'
      else ''
    )
    sections.append(
      report_lib.Section(
        'Sparse versus dense',
        paragraphs=(
          f'k human raters drawn per utterance (nested draws, {settings["repeats"]} repeats), each '
          f"estimate scored against {study.reference_words}{shrinks}. Ambiguity: the run's level "
          f'definition, {study.level_words}. {study.n_items} utterances with enough raters, '
          f'{study.n_left_out} left out.',
          *study.notes,
        ),
        tables=tuple(
          report_lib.Table(
            f'{METRIC_WORDS[metric]} by condition, level and k, against {study.reference_words}',
            pivot(study.rows, ('condition', 'level'), 'k', metric),
          )
          for metric in ('js_divergence', 'kl')
        ),
        figures=tuple(
          report_lib.Figure(
            figure_caption(f'sparse_dense_{metric}', summary), figures[f'sparse_dense_{metric}']
          )
          for metric in ('js_divergence', 'kl')
        ),
      )
    )
  files = [
    dict(
      table=name.replace('_', ' '),
      csv=os.path.relpath(paths['csv'], out_dir),
      markdown=os.path.relpath(paths['md'], out_dir),
      json=os.path.relpath(paths['json'], out_dir),
    )
    for name, paths in written.items()
  ]
  sections.append(report_lib.Section('Files', tables=(report_lib.Table('Tables written', files),)))
  return sections


def overview_section(
  summary_path: str,
  table_json: Mapping[str, str],
  plot_paths: Mapping[str, str],
  report_path: str,
  metrics_shown: tuple[str, ...] = ('js_divergence', 'bhattacharyya'),
) -> report_lib.Section:
  """The analysis in brief for another report (the end-to-end run's), from the files it wrote.

  Captions come from summary.json: each table names its reference (the dense human reference only
  where the corpus has one), figures are captioned in words, and kappa is shown with what it was
  fitted on.

  Args:
    summary_path: the analysis's summary.json.
    table_json: table name -> its JSON rows ('alignment', 'sparse_dense', ...).
    plot_paths: figure name -> PNG path.
    report_path: the full analysis report, named in the text.
    metrics_shown: the alignment metrics to show.
  """
  summary = jsonio.read_json(summary_path)
  reference_words = summary['reference_words']
  shown = [
    report_lib.Table(
      f'{METRIC_WORDS[metric]} by condition and level, against {reference_words}',
      pivot(_read_rows(table_json['alignment']), ('condition',), 'level', metric),
    )
    for metric in metrics_shown
  ]
  study = summary.get('sparse_dense')
  study_rows = _read_rows(table_json['sparse_dense']) if 'sparse_dense' in table_json else []
  if study and study_rows:
    shown.append(
      report_lib.Table(
        f'JS divergence of k sparse human votes (with and without the proxy) by k, against '
        f'{study["reference_words"]}; {study["level_words"]}',
        pivot(study_rows, ('condition', 'level'), 'k', 'js_divergence'),
      )
    )
  return report_lib.Section(
    'How well sparse votes, proxies and their combination recover the reference',
    paragraphs=(
      'Cells: value [bootstrap interval] (n/a: no utterance). Lower JS is better, higher BC is better. '
      f'Ambiguity levels: {summary["levels_words"]}. {summary["kappa_words"]}. '
      f'The full analysis report: {report_path}.',
    ),
    tables=tuple(shown),
    figures=tuple(
      report_lib.Figure(summary.get('figure_captions', {}).get(name) or figure_caption(name, summary), path)
      for name, path in plot_paths.items()
    ),
  )
