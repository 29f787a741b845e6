"""The end-to-end job: corpus -> proxies -> distributions -> DiME-Aug -> training -> evaluation ->
analysis -> report, each stage keyed by its inputs (perax.pipeline.stages).

Layout of ``out_dir`` (one run at a time: it is locked with perax.core.locks.RunLock). A run may
span several processes (perax.core.distributed): proxies, training and evaluation share out their
work over all of them, process 0 runs the other stages and writes every record, and ``out_dir`` must
be on a filesystem every process sees (perax.pipeline.stages).

  stages/<stage>.json   what each shared stage used (key), wrote (outputs, digest) and took (seconds)
  data/                 prepare: utterances.parquet, votes.parquet (human), reference_votes.parquet (if any)
  hf_checkpoint/, checkpoint/   checkpoint: a tiny random model (demo only), converted
  proxies/{sample,score}/       proxies: votes.parquet and scores.parquet, once per utterance
  distributions/{human,combined}/   per plan: human-only distributions (the evaluation reference and
                        the level definition) and human + proxy ones (the training targets)
  augment/              per plan: DiME-Aug balanced training split and balanced evaluation set(s)
  train/                per plan: metrics.jsonl, checkpoints/, loss.png
  evaluation/{human,human_proxy}/<split>/   per plan: predictions and metrics by ambiguity level
  analysis/             analyze: proxies against human votes, sparse-vs-dense study
  report.html, report.md    report

A *plan* is one training run: without folds it lives in ``out_dir`` itself; with cross-validation
(``folds``) each fold's plan lives in ``out_dir/folds/<fold>/`` with its own ``stages/``, and shares
the data, checkpoint, proxies and analysis above it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax

from perax.core import locks, log, rendezvous, settings_record
from perax.core.errors import InputError
from perax.data import tables
from perax.pipeline import bodies, compose, training
from perax.pipeline import stages as stages_lib
from perax.pipeline.config import ALL_FOLDS, PipelineConfig
from perax.raters import prompts as prompts_lib

SHARED_STAGES = ('prepare', 'checkpoint', 'proxies', 'analyze')
PLAN_STAGES = ('distributions', 'augment', 'train', 'evaluate')
STAGES = ('prepare', 'checkpoint', 'proxies', *PLAN_STAGES, 'analyze', 'report')
FOLDS_DIR = 'folds'
CORPUS_RECORD = 'corpus.json'


def _sha(path: str | None) -> str | None:
  return stages_lib.file_sha256(path) if path else None


def resolve_folds(wanted: Sequence[str] | None, utterances: str) -> tuple[str, ...]:
  """The folds to run: every value of the ``fold`` column for 'all', else the ones named.

  A number n stands for the fold named like 'Session<n>' (IEMOCAP) when that is the only match.

  Raises:
    InputError: the corpus has no folds, or a named fold is not among them (they are listed).
  """
  if not wanted:
    return ()
  table = tables.read_utterances(utterances)
  present = (
    sorted({str(f) for f in tables.column(table, 'fold') if f is not None})
    if 'fold' in table.column_names
    else []
  )
  if not present:
    raise InputError('--folds needs a corpus whose utterances have folds (IEMOCAP sessions)', path=utterances)
  if list(wanted) == [ALL_FOLDS]:
    return tuple(present)
  chosen = []
  for name in wanted:
    matches = [f for f in present if f == name] or [f for f in present if name.isdigit() and f.endswith(name)]
    if len(matches) != 1:
      raise InputError(
        f'unknown fold {name!r}; folds: {", ".join(present)} (or {ALL_FOLDS})', path=utterances
      )
    chosen.append(matches[0])
  return tuple(dict.fromkeys(chosen))


def resolve_splits(wanted: Sequence[str], utterances: str) -> tuple[str, ...]:
  """The corpus's names of the wanted test splits, matched case-insensitively ('test1' -> 'Test1').

  Raises:
    InputError: a wanted split is not in the utterances table (its splits are listed).
  """
  present = sorted({str(s) for s in tables.column(tables.read_utterances(utterances), 'split')})
  by_lower = {s.lower(): s for s in present}
  missing = [w for w in wanted if w.lower() not in by_lower]
  if missing:
    raise InputError(
      f'no utterance in test split(s) {missing}; splits: {", ".join(present)} (choose with --test_splits)',
      path=utterances,
    )
  return tuple(by_lower[w.lower()] for w in wanted)


def _leader() -> bool:
  """Process 0: the one that writes the run's records and the stages that are not shared out."""
  return jax.process_index() == 0


def _claim_corpus(config: PipelineConfig) -> None:
  """Refuses an out_dir that holds a study of another corpus: nothing there could be reused."""
  settings_record.claim(
    os.path.join(config.out_dir, stages_lib.STAGE_DIR, CORPUS_RECORD),
    {'corpus': config.corpus, 'corpus_path': config.corpus_path},
    advice='this out_dir holds a study of another corpus; use another --out_dir',
  )


def _run_plan(
  config: PipelineConfig,
  root: str,
  label: str,
  utterances: str,
  data: dict,
  shared: dict[str, stages_lib.Record],
  test_splits: Sequence[str] | None,
  fold: str | None,
) -> dict[str, dict]:
  """distributions -> augment -> train -> evaluate in ``root`` (one fold, or the corpus's own splits)."""
  runner = stages_lib.Stages(root, label, base=config.out_dir)
  path = lambda *parts: os.path.join(root, *parts)  # noqa: E731
  proxies, checkpoint = shared['proxies'], shared['checkpoint']

  def distributions_body():
    table = (
      bodies.fold_utterances(utterances, fold, path('data', 'utterances.parquet')) if fold else utterances
    )
    return bodies.build_distributions(
      config,
      table,
      data['votes'],
      proxies.outputs['score'],
      path('distributions'),
      runner.shown('distributions'),
    )

  distributions = runner.run(
    'distributions',
    {
      'utterances': _sha(utterances),
      'votes': _sha(data['votes']),
      'scores': _sha(proxies.outputs['score']),
      'fold': fold,
      'label_set': config.resolved_label_set(),
      'combine': config.combine,
      'level_edges': config.level_edges,
      'seed': config.seed,
    },
    distributions_body,
    clears=[path('distributions')] + ([path('data')] if fold else []),
  ).outputs
  plan_utterances = distributions['utterances']
  splits = ('test',) if fold else resolve_splits(test_splits or (), plan_utterances)
  levels = bodies.level_definition(bodies.read_info(distributions['human_info']))
  augmented = runner.run(
    'augment',
    {'distributions': runner.records['distributions'].digest, 'test_splits': splits, 'seed': config.seed},
    lambda: bodies.augment(
      config,
      plan_utterances,
      distributions['combined'],
      levels,
      splits,
      path('augment'),
      runner.shown('augment'),
    ),
    clears=[path('augment')],
  ).outputs
  train_config = training.training_config(
    config,
    checkpoint.outputs['checkpoint'],
    plan_utterances,
    distributions['combined'],
    splits,
    augment_dir=path('augment'),
    levels_path=distributions['human_info'],
  )
  trained = runner.run(
    'train',
    {
      'distributions': runner.records['distributions'].digest,
      'augment': runner.records['augment'].digest,
      'model': checkpoint.digest,
      'train_config': _sha(config.train_config),
      'train_steps': config.train_steps,
      'seed': config.seed,
    },
    lambda: training.train(train_config, path('train'), runner.shown('train')),
    clears=[path('train')],
    everywhere=True,
  ).outputs
  targets = {ref: distributions[name] for ref, name in training.DISTRIBUTION_OF.items()}
  evaluated = runner.run(
    'evaluate',
    {
      'train': runner.records['train'].digest,
      'distributions': runner.records['distributions'].digest,
      'test_splits': splits,
    },
    lambda: training.evaluate(
      train_config, path('train'), targets, splits, path('evaluation'), runner.shown('evaluate')
    ),
    clears=[path('evaluation')],
    everywhere=True,
  ).outputs
  return {
    'distributions': distributions,
    'augment': augmented,
    'train': trained,
    'evaluate': evaluated,
    'runner': runner,
  }


def run_pipeline(config: PipelineConfig) -> dict:
  """Runs (or resumes) every stage; returns each stage's outputs by stage name.

  Without folds the result has one entry per name in :data:`STAGES`; with folds the plan stages'
  outputs are under ``result['folds'][fold][stage]``.

  Raises:
    InputError: bad input or settings, naming the stage ('[proxies] ...'); the out_dir holds a study
      of another corpus; another process holds the out_dir.
  """
  out = config.out_dir
  path = lambda *parts: os.path.join(out, *parts)  # noqa: E731
  with locks.locked_for_the_run(out, 'pipeline out_dir'):
    label_set = config.resolved_label_set()
    rendezvous.run_everywhere('pipeline corpus claimed', lambda: _claim_corpus(config) if _leader() else None)
    top = stages_lib.Stages(out)
    data = top.run(
      'prepare',
      {
        'corpus': config.corpus,
        'corpus_path': config.corpus_path,
        'corpus_options': dict(config.corpus_options),
        'lenient': config.lenient,
        'label_set': label_set,
        'seed': config.seed,
      },
      lambda: bodies.prepare(config, path('data')),
      clears=[path('data')],
    ).outputs
    checkpoint = top.run(
      'checkpoint',
      {'checkpoint': config.checkpoint, 'seed': None if config.checkpoint else config.seed},
      lambda: bodies.checkpoint(config, out),
      clears=[path('hf_checkpoint'), path('checkpoint')],
    )
    prompts = [
      dataclasses.asdict(p) for p in prompts_lib.load_prompts(config.prompts_config, config.prompt_ids)
    ]
    top.run(
      'proxies',
      {
        'model': checkpoint.digest,
        'utterances': _sha(data['utterances']),
        'label_set': label_set,
        'prompts': prompts,
        'dtype': config.dtype,
        **bodies.proxies_job_settings(config),
      },
      lambda: bodies.generate_proxies(
        config, checkpoint.outputs['checkpoint'], data['utterances'], path('proxies')
      ),
      clears=[path('proxies')],
      everywhere=True,
    )
    folds = resolve_folds(config.folds, data['utterances'])
    plans = {}
    if folds:
      for fold in folds:
        plans[fold] = _run_plan(
          config, path(FOLDS_DIR, fold), fold, data['utterances'], data, top.records, None, fold
        )
    else:
      plans[''] = _run_plan(
        config, out, '', data['utterances'], data, top.records, config.wanted_test_splits(), None
      )
    top.run(
      'analyze',
      {
        'utterances': _sha(data['utterances']),
        'votes': _sha(data['votes']),
        'reference_votes': _sha(data.get('reference_votes')),
        'scores': top.records['proxies'].digest,
        'label_set': label_set,
        'sparse_k': config.sparse_k,
        'repeats': config.repeats,
        'bootstrap': config.bootstrap,
        'seed': config.seed,
      },
      lambda: bodies.analyze(config, data, top.records['proxies'].outputs['score'], path('analysis'), out),
      clears=[path('analysis')],
    )
    shared = {name: top.records[name].outputs for name in SHARED_STAGES}
    plan_outputs = {name: {k: v for k, v in plan.items() if k != 'runner'} for name, plan in plans.items()}
    digests = {name: record.digest for name, record in top.records.items()}
    for name, plan in plans.items():
      digests.update({f'{name}/{stage}': record.digest for stage, record in plan['runner'].records.items()})
    report = top.run(
      'report',
      {
        'inputs': digests,
        'config': {
          'corpus': config.corpus,
          'corpus_path': config.corpus_path,
          'label_set': label_set,
          'combine': config.combine,
          'seed': config.seed,
          'checkpoint': config.checkpoint,
          'folds': folds,
        },
      },
      lambda: compose.write(config, shared, plan_outputs),
    ).outputs
  log.info(f'report: {report["html"]}', stage='report')
  result = dict(shared)
  if folds:
    result['folds'] = plan_outputs
  else:
    result.update(plan_outputs[''])
  result['report'] = report
  return result


def describe_saved(out_dir: str) -> str:
  """What an interrupted pipeline run leaves for its rerun: the finished stages, and the one that was
  running (which resumes from its own files: proxy shards, training checkpoints)."""
  finished, running = [], []
  roots = [('', out_dir)]
  folds_dir = os.path.join(out_dir, FOLDS_DIR)
  if os.path.isdir(folds_dir):
    roots += [(f' {fold}', os.path.join(folds_dir, fold)) for fold in sorted(os.listdir(folds_dir))]
  for label, root in roots:
    for name in STAGES:
      if os.path.exists(os.path.join(root, stages_lib.STAGE_DIR, f'{name}.json')):
        finished.append(name + label)
      elif os.path.exists(os.path.join(root, stages_lib.STAGE_DIR, f'{name}.started.json')):
        running.append(name + label)
  saved = f'finished stages kept in {out_dir}: {", ".join(finished) or "none"}'
  if running:
    saved += f'; interrupted: {", ".join(running)} (resumes from the files it wrote)'
  return saved
