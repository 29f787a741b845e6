"""The run's report: what ran, the level definition (stated once), training, evaluation, analysis.

Composed only from the files and records the stages wrote, so a resumed run writes the same report as
one that was never interrupted. Paths are shown relative to the run directory, and the report carries
no timings (they are in ``stages/<name>.json``). Every table names its reference: evaluation against
the human votes alone (the default) and, as a labelled extra, against the human + proxy targets the
head was trained on. With cross-validation, each table has a row per fold and a mean ± std row
(population std over folds, as papers report them).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from perax import analysis
from perax.analysis import report as report_lib
from perax.core import jsonio
from perax.pipeline import bodies, training
from perax.pipeline.config import PipelineConfig
from perax.train import evaluate as evaluate_lib

REFERENCE_WORDS = {
  training.HUMAN: 'the human votes alone (the default reference)',
  training.HUMAN_PROXY: 'the human + proxy targets the head was trained on (an extra view: they contain proxy '
  'evidence, so they are not an independent reference)',
}
LEVEL_ROWS = evaluate_lib.LEVEL_ORDER
TABLE_METRICS = evaluate_lib.TABLE_METRICS


def relative(path: str | None, root: str) -> str:
  """``path`` relative to the run directory (n/a when there is none)."""
  if not path:
    return 'n/a'
  return os.path.relpath(path, root)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """(mean, population std) of the finite values; (nan, nan) when there is none."""
  finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
  if not finite.size:
    return math.nan, math.nan
  return float(finite.mean()), float(finite.std())


def format_mean_std(values: Sequence[float]) -> str:
  mean, std = mean_std(values)
  if math.isnan(mean):
    return 'n/a'
  return f'{report_lib.format_value(mean)} ± {report_lib.format_value(std)}'


def _cell(value: Any) -> Any:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return 'n/a'
  return value


def metric_rows(by_level: Mapping[str, Mapping[str, float]]) -> list[dict]:
  """One row per level (low, medium, high, all), the readable metrics as columns."""
  return [
    {'level': level, **{name: _cell(by_level[level].get(name)) for name in TABLE_METRICS}}
    for level in LEVEL_ROWS
    if level in by_level
  ]


def fold_rows(per_fold: Mapping[str, Mapping[str, Mapping[str, float]]], level: str) -> list[dict]:
  """Rows per fold at one level, then a 'mean ± std' row over the folds."""
  rows = [
    {'fold': fold, **{name: _cell(by_level[level].get(name)) for name in TABLE_METRICS}}
    for fold, by_level in per_fold.items()
    if level in by_level
  ]
  rows.append(
    {
      'fold': 'mean ± std',
      **{
        name: format_mean_std(
          [by_level[level].get(name) for by_level in per_fold.values() if level in by_level]
        )
        for name in TABLE_METRICS
      },
    }
  )
  return rows


def level_rows_over_folds(per_fold: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[dict]:
  """Mean ± std over folds, one row per level."""
  return [
    {
      'level': level,
      **{
        name: format_mean_std(
          [by_level[level].get(name) for by_level in per_fold.values() if level in by_level]
        )
        for name in TABLE_METRICS
      },
    }
    for level in LEVEL_ROWS
  ]


def _what_ran(
  config: PipelineConfig, shared: Mapping[str, Mapping], plans: Mapping[str, Mapping]
) -> report_lib.Section:
  root = config.out_dir
  checkpoint = shared['checkpoint']['checkpoint']
  facts = {
    'corpus': config.corpus
    + (f' ({config.corpus_path})' if config.corpus_path else ' (embedded demo, generated from the seed)'),
    'label set': config.resolved_label_set(),
    'checkpoint': (
      relative(checkpoint, root) + ' (tiny random Qwen2-Audio, converted from HF format)'
      if not config.checkpoint
      else checkpoint
    ),
    'proxy votes': relative(shared['proxies']['sample'], root),
    'proxy scores': relative(shared['proxies']['score'], root),
    'training targets': f'human votes combined with proxy scores (combine={config.combine})',
    'evaluation reference': 'human votes only (human + proxy targets in an extra table)',
    'folds': ', '.join(plans) if config.folds else 'none (the corpus splits)',
    'seed': config.seed,
  }
  paragraphs = [
    'Stages: prepare -> checkpoint -> proxies -> distributions -> augment -> train -> evaluate -> analyze '
    '-> report. Each stage records the settings and input digests it used and is reused when they are '
    'unchanged, so rerunning the same command resumes; stage timings are in stages/<stage>.json.'
  ]
  if config.folds:
    paragraphs.append(
      'Cross-validation: the proxies were generated once per utterance and are shared by every fold; '
      'each fold has its own distributions, training, evaluation and level definition under folds/<fold>/.'
    )
  if not config.checkpoint:
    paragraphs.append(
      'The proxies here come from a tiny randomly initialised Qwen2-Audio: it knows nothing of emotion, so '
      'its votes show the machinery, not the value of proxies. Run with --checkpoint (a converted '
      'Qwen2-Audio-7B-Instruct) for real proxies.'
    )
  return report_lib.Section('What ran', paragraphs=tuple(paragraphs), facts=facts)


def _levels(plans: Mapping[str, Mapping], folds: bool) -> report_lib.Section:
  definitions = {
    name: bodies.level_definition(jsonio.read_json(plan['distributions']['human_info']))
    for name, plan in plans.items()
  }
  paragraphs = [
    'Ambiguity level: the normalised entropy of the human vote distribution, cut at one pair of edges '
    'per run. Distributions, DiME-Aug and evaluation use the same edges.'
  ]
  for name, plan in plans.items():
    info = jsonio.read_json(plan['distributions']['human_info'])
    if info.get('n_without_human'):
      reasons = ', '.join(f'{n} {why}' for why, n in info.get('without_human', {}).items() if n)
      where = f' ({name})' if folds else ''
      paragraphs.append(
        f'Targets without a human vote{where}: {info["n_without_human"]} utterances ({reasons}); they '
        'have no level and are left out of training and evaluation.'
      )
  tables = ()
  if not folds:
    (definition,) = definitions.values()
    paragraphs.append(f'This run: {definition.describe()}.')
  else:
    tables = (
      report_lib.Table(
        'Level definition of each fold (fitted on that fold’s training utterances)',
        [{'fold': name, 'definition': d.describe()} for name, d in definitions.items()],
      ),
    )
  return report_lib.Section('Ambiguity levels', paragraphs=tuple(paragraphs), tables=tables)


def _training(plans: Mapping[str, Mapping], folds: bool) -> report_lib.Section:
  def facts_of(trained):
    return {
      'steps': trained['final_step'],
      'best step': _cell(trained['best_step']),
      f'first loss (step {_cell(trained.get("first_step"))})': _cell(trained['first_loss']),
      'last loss': _cell(trained['last_loss']),
    }

  figures = tuple(
    report_lib.Figure(
      f'Training loss per step{f", fold {name}" if folds else ""}', plan['train']['loss_plot']
    )
    for name, plan in plans.items()
    if plan['train'].get('loss_plot')
  )
  if not folds:
    (plan,) = plans.values()
    return report_lib.Section(
      'Fine-tuning the distributional head', facts=facts_of(plan['train']), figures=figures
    )
  rows = [
    {
      'fold': name,
      'steps': plan['train']['final_step'],
      'best step': _cell(plan['train']['best_step']),
      'first loss': _cell(plan['train']['first_loss']),
      'last loss': _cell(plan['train']['last_loss']),
    }
    for name, plan in plans.items()
  ]
  return report_lib.Section(
    'Fine-tuning the distributional head',
    tables=(report_lib.Table('Training of each fold', rows),),
    figures=figures,
  )


def _evaluation(plans: Mapping[str, Mapping], reference: str, folds: bool) -> report_lib.Section:
  extra = reference != training.HUMAN
  title = (
    'Evaluation against human + proxy targets (extra)' if extra else 'Evaluation against the human votes'
  )
  paragraphs = [
    f'Metrics of the fine-tuned head (best checkpoint) against {REFERENCE_WORDS[reference]}, overall and '
    + (
      'per ambiguity level, on each test split and on the DiME-Aug balanced evaluation set built from it '
      '(whose mixed targets are human + proxy targets). '
      if extra
      else 'per ambiguity level, on each test split (the balanced set carries human + proxy targets, so it '
      'is scored in the extra table). '
    )
    + 'n/a: no utterance at that level.'
  ]
  sets: dict[str, dict[str, Mapping]] = {}
  for name, plan in plans.items():
    for set_name, by_level in plan['evaluate']['metrics'][reference].items():
      sets.setdefault(set_name, {})[name] = by_level
  tables = []
  for set_name, per_fold in sets.items():
    if not folds:
      (by_level,) = per_fold.values()
      tables.append(
        report_lib.Table(
          f'Set {set_name}, reference {reference}: metrics by ambiguity level', metric_rows(by_level)
        )
      )
      continue
    tables.append(
      report_lib.Table(
        f'Set {set_name}, reference {reference}: all utterances, per fold and mean ± std over folds',
        fold_rows(per_fold, 'all'),
      )
    )
    tables.append(
      report_lib.Table(
        f'Set {set_name}, reference {reference}: mean ± std over folds by ambiguity level',
        level_rows_over_folds(per_fold),
      )
    )
  return report_lib.Section(title, paragraphs=tuple(paragraphs), tables=tuple(tables))


def _analysis(analyzed: Mapping, root: str) -> report_lib.Section:
  """The analysis's key tables and plots, read back from the files its stage wrote."""
  reference = (
    'the dense human reference (reference_votes)' if analyzed.get('has_reference') else 'the human votes'
  )
  alignment_rows = jsonio.read_json(analyzed['tables']['alignment'])
  tables = [
    report_lib.Table(
      f'{metric} of each condition against {reference}, by ambiguity level',
      analysis.pivot(alignment_rows, ('condition',), 'level', metric),
    )
    for metric in ('js_divergence', 'bhattacharyya')
  ]
  if 'sparse_dense' in analyzed['tables']:
    study_rows = jsonio.read_json(analyzed['tables']['sparse_dense'])
    if study_rows:
      tables.append(
        report_lib.Table(
          f'js_divergence of k sparse human votes (with and without proxies) against {reference}, by k',
          analysis.pivot(study_rows, ('condition', 'level'), 'k', 'js_divergence'),
        )
      )
  return report_lib.Section(
    f'How well sparse votes, proxies and their combination recover {reference}',
    paragraphs=(
      'Cells: value [95% bootstrap interval]. Lower JS is better, higher BC is better. '
      f'The full analysis report: {relative(analyzed["report"], root)}.',
    ),
    tables=tuple(tables),
    figures=tuple(
      report_lib.Figure(name.replace('_', ' '), path) for name, path in sorted(analyzed['plots'].items())
    ),
  )


def write(config: PipelineConfig, shared: Mapping[str, Mapping], plans: Mapping[str, Mapping]) -> dict:
  """Writes report.html and report.md into the run directory; returns their paths.

  Args:
    shared: outputs of the shared stages (prepare, checkpoint, proxies, analyze) by stage name.
    plans: per fold (or one entry, '' without folds) the outputs of distributions, augment, train
      and evaluate by stage name.
  """
  folds = bool(config.folds)
  sections = [
    _what_ran(config, shared, plans),
    _levels(plans, folds),
    _training(plans, folds),
    _evaluation(plans, training.HUMAN, folds),
    _evaluation(plans, training.HUMAN_PROXY, folds),
    _analysis(shared['analyze'], config.out_dir),
  ]
  title = 'perax: end-to-end run' + (f', {len(plans)}-fold cross-validation' if folds else '')
  paths = report_lib.write_report(config.out_dir, title, sections)
  return {'html': paths.html, 'markdown': paths.markdown}
