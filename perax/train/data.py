"""What a training run reads: corpus tables, targets, label set, level definition, prompt; and its Grain
pipelines.

A run's data config (``config.data``, see perax/train/config.py) names an utterances table and a
distributions table (perax.distributions). The demo config leaves both empty: the demo corpus and
its distributions are then generated under ``<workdir>/data`` (by process 0 of a multi-process run).
With ``test_fold`` set (IEMOCAP's leave-one-session-out folds), the splits are rebuilt from the
``fold`` column: that fold is the (first) test split, ``dev_fold`` (if any) the dev split, every other
fold the training split.

Targets: rows without a human vote (``has_human`` false, or ``n_human`` 0) are left out of training
and evaluation, counted and logged, unless ``proxy_only_targets`` is set.

Ambiguity levels: a run has one :class:`perax.distributions.levels.LevelDefinition`, resolved by
:func:`resolve_levels` (``level_definition`` file, else the ``levels`` record of the distributions.json
next to the distributions table, else tertiles of the training split's human entropy; a fold split
refits the tertiles on its own training split unless ``level_definition`` is given). The distributions'
``ambiguity`` column is recomputed with it, and DiME-Aug plans with it.

Training examples: the training split's utterances plus a DiME-Aug plan made in memory, or, with
``augmented_train_dir``, exactly the set launch/augment.py (the pipeline's augment stage) wrote
there. Evaluation sets: each test split, and the DiME-Aug balanced set of each (built in memory, or
read from ``eval_set_dirs``); each example has an ambiguity level for per-level metrics.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
import pyarrow as pa
from jax.sharding import Mesh

from perax import distributions as dist
from perax.augment import augmented_set, dime_aug, input_pipeline
from perax.core import log, rendezvous
from perax.core.errors import InputError
from perax.data import corpora, tables
from perax.data import labels as labels_lib
from perax.distributions.levels import LevelDefinition
from perax.raters import prompts
from perax.train.config import TrainConfig
from perax.train.mesh import batch_shards

DATA_DIRNAME = 'data'
UTTERANCES_FILE = 'utterances.parquet'
DISTRIBUTIONS_FILE = 'distributions.parquet'
DISTRIBUTIONS_INFO_FILE = 'distributions.json'
PLAN_FILE = 'plan.parquet'


@dataclasses.dataclass(frozen=True)
class RunData:
  """The tables and choices every pipeline of a run is built from.

  Attributes:
    utterances: utterances table (perax.data.tables), splits final.
    distributions: targets (utt_id, p_<label>, entropy_human, ambiguity, ...): only rows with human
      votes unless proxy-only targets are asked for; ``ambiguity`` from ``levels``.
    labels: the label set's labels, in target-column order.
    levels: the run's one ambiguity level definition.
    prompt: the question the backbone reads with each clip.
    without_human: rows left out of the targets for having no human vote.
  """

  utterances: pa.Table
  distributions: pa.Table
  labels: tuple[str, ...]
  levels: LevelDefinition
  prompt: prompts.Prompt
  without_human: int = 0


def _generate_demo(out_dir: str, seed: int, label_set: str) -> tuple[str, str]:
  """Writes the demo corpus and its human-vote distributions into ``out_dir``."""
  paths = corpora.prepare('demo', None, out_dir, label_set=label_set, seed=seed)
  utterances = tables.read_utterances(paths['utterances'])
  table, info = dist.build_distributions(
    tables.read_votes([paths['votes']]), label_set=label_set, utterances=utterances, seed=seed
  )
  distributions_path, _ = dist.write_distributions(table, info, out_dir)
  log.info(dist.format_summary(info), stage='train')
  return paths['utterances'], distributions_path


def _table_paths(data: TrainConfig, workdir: str, seed: int) -> tuple[str, str]:
  default_dir = os.path.join(workdir, DATA_DIRNAME)
  utterances = data.utterances or os.path.join(default_dir, UTTERANCES_FILE)
  distributions = data.distributions or os.path.join(default_dir, DISTRIBUTIONS_FILE)
  generate = data.corpus == 'demo' and not (data.utterances or data.distributions)
  if generate:

    def write_on_process_0() -> None:
      if jax.process_index() == 0 and not all(os.path.exists(p) for p in (utterances, distributions)):
        _generate_demo(default_dir, seed, data.label_set)

    # Every process waits for process 0's write (however long) and sees its error.
    rendezvous.run_everywhere('demo corpus written', write_on_process_0)
  missing = [p for p in (utterances, distributions) if not os.path.exists(p)]
  if missing:
    raise InputError(
      'no such file (set config.data.utterances and config.data.distributions)', path=missing[0]
    )
  return utterances, distributions


def split_by_fold(
  utterances: pa.Table,
  test_fold: str,
  dev_fold: str = '',
  *,
  train_split: str = 'train',
  dev_split: str = 'dev',
  test_split: str = 'test',
) -> pa.Table:
  """Rebuilds splits from folds: ``test_fold`` -> test_split, ``dev_fold`` -> dev_split, others train.

  Raises:
    InputError: no utterance has ``test_fold`` (the folds present are named).
  """
  folds = tables.column(utterances, 'fold')
  if test_fold not in set(folds):
    raise InputError(f'no utterance has fold {test_fold!r}; folds: {sorted(set(map(str, folds)))}')
  split = np.where(folds == test_fold, test_split, np.where(folds == dev_fold, dev_split, train_split))
  return utterances.set_column(
    utterances.schema.get_field_index('split'), 'split', pa.array(split.tolist(), pa.string())
  )


def resolve_levels(
  data: TrainConfig,
  utterances: pa.Table,
  distributions: pa.Table,
  labels: tuple[str, ...],
  distributions_path: str,
) -> LevelDefinition:
  """The run's one level definition (see the module docstring for the order it is looked up in)."""
  if data.level_definition:
    levels = dime_aug.read_levels(data.level_definition)
    if levels is None:
      raise InputError(
        'config.data.level_definition: the file holds no level definition', path=data.level_definition
      )
    return levels
  info_path = os.path.join(os.path.dirname(os.path.abspath(distributions_path)), DISTRIBUTIONS_INFO_FILE)
  if not data.test_fold and os.path.exists(info_path):
    levels = dime_aug.read_levels(info_path)
    if levels is not None:
      return levels
  return dime_aug.levels_from_split(utterances, distributions, labels, data.train_split)


def with_levels(distributions: pa.Table, levels: LevelDefinition) -> pa.Table:
  """``distributions`` with ``ambiguity`` recomputed from ``entropy_human`` by ``levels`` (null where
  there is no human vote); unchanged when the table has no human entropy."""
  if 'entropy_human' not in distributions.column_names:
    return distributions
  column = pa.array(levels.levels(tables.column(distributions, 'entropy_human')).tolist(), pa.string())
  if 'ambiguity' in distributions.column_names:
    return distributions.set_column(distributions.schema.get_field_index('ambiguity'), 'ambiguity', column)
  return distributions.append_column('ambiguity', column)


def load_run_data(data: TrainConfig, workdir: str, seed: int) -> RunData:
  """Reads (or, for the demo, first generates) the run's tables and resolves its choices.

  Args:
    data: the ``config.data`` block.
    workdir: the run's directory (where demo tables are generated).
    seed: seeds the demo corpus.

  Raises:
    InputError: a table is missing, lacks the label set's columns, or a fold is unknown.
  """
  utterances_path, distributions_path = _table_paths(data, workdir, seed)
  utterances = tables.read_utterances(utterances_path)
  distributions = tables.read_table(distributions_path)
  if data.test_fold:
    utterances = split_by_fold(
      utterances,
      data.test_fold,
      data.dev_fold,
      train_split=data.train_split,
      dev_split=data.dev_split or 'dev',
      test_split=data.test_splits[0],
    )
  labels = tuple(labels_lib.get_label_set(data.label_set).labels)
  missing = [c for c in tables.label_columns(labels) if c not in distributions.column_names]
  if missing:
    raise InputError(
      f'distributions lack the columns {missing} of label set {data.label_set!r}', path=distributions_path
    )
  total = distributions.num_rows
  distributions = augmented_set.keep_human_targets(
    distributions, data.proxy_only_targets, 'training and evaluation targets'
  )
  levels = resolve_levels(data, utterances, distributions, labels, distributions_path)
  log.info(f'ambiguity levels: {levels.describe()}', stage='train')
  distributions = with_levels(distributions, levels)
  prompt = prompts.load_prompts(data.prompts or None, [data.prompt_id] if data.prompt_id else None)[0]
  return RunData(
    utterances=utterances,
    distributions=distributions,
    labels=labels,
    levels=levels,
    prompt=prompt,
    without_human=total - distributions.num_rows,
  )


def _in_split(run: RunData, split: str) -> np.ndarray:
  """[N] bool over the distributions' rows: the utterance is in ``split``."""
  in_split = tables.column(run.utterances, 'split') == split
  ids = set(tables.column(run.utterances, 'utt_id')[in_split])
  return np.asarray([u in ids for u in tables.column(run.distributions, 'utt_id')], bool)


def has_split(run: RunData, split: str) -> bool:
  """Whether ``split`` names utterances that have a target."""
  return bool(split) and bool(_in_split(run, split).any())


def split_targets(run: RunData, split: str) -> np.ndarray:
  """[N, C] float64 target distributions of the utterances of ``split``."""
  return dime_aug.target_matrix(run.distributions.filter(pa.array(_in_split(run, split))), run.labels)


def pipeline_config(config: TrainConfig, mesh: Mesh) -> input_pipeline.PipelineConfig:
  """The Grain pipeline's batching for a run: the global batch split over the mesh's batch axes."""
  data = config.data
  return input_pipeline.PipelineConfig(
    global_batch_size=config.batch_size,
    data_parallel_size=batch_shards(mesh),
    bucket_seconds=tuple(data.bucket_seconds),
    max_transcript_tokens=data.max_transcript_tokens,
    padding_side=data.padding_side,
    num_workers=data.num_workers,
  )


@dataclasses.dataclass(frozen=True)
class WrittenSet:
  """A DiME-Aug set as launch/augment.py wrote it: every row an example with its own audio.

  Attributes:
    utterances: its utterances.parquet (augmented rows point at their rendered wav files).
    distributions: its distributions.parquet (``p_<label>`` targets, ``ambiguity``, provenance).
    split: the one split its rows belong to.
  """

  utterances: pa.Table
  distributions: pa.Table
  split: str


def read_written_set(directory: str, run: RunData, split: str, field: str) -> WrittenSet:
  """Reads the set written under ``directory`` for ``split``, keeping only the examples whose
  utterances (originals, anchors and partners) have targets in this run (rows without human votes
  are left out unless proxy-only targets are asked for); the rest are counted and logged.

  Raises:
    InputError: a file is missing, the set holds another split, or it lacks the label columns.
  """
  paths = {name: os.path.join(directory, name) for name in (UTTERANCES_FILE, DISTRIBUTIONS_FILE, PLAN_FILE)}
  for path in paths.values():
    if not os.path.exists(path):
      raise InputError(f'config.data.{field}: no such file (run launch/augment.py into it first)', path=path)
  utterances = tables.read_utterances(paths[UTTERANCES_FILE])
  distributions = tables.read_table(paths[DISTRIBUTIONS_FILE])
  splits = set(tables.column(utterances, 'split'))
  if splits != {split}:
    raise InputError(
      f'config.data.{field}: the set holds split(s) {sorted(map(str, splits))}, this run needs {split!r}',
      path=paths[UTTERANCES_FILE],
    )
  dime_aug.target_matrix(distributions, run.labels)  # refuses missing columns and non-distributions
  known = set(tables.column(run.distributions, 'utt_id'))
  members = [tables.column(distributions, name) for name in ('utt_id', 'anchor_id', 'partner_id')]
  origin = tables.column(distributions, 'origin')
  keep = np.asarray(
    [
      (u in known) if o != 'augmented' else (a in known and (p is None or p in known))
      for u, a, p, o in zip(*members, origin)
    ],
    bool,
  )
  if not keep.all():
    log.warning(
      f'{int((~keep).sum())} of {len(keep)} examples of {directory} are made of utterances without a '
      'target in this run (no human vote, or not in its tables) and are left out',
      stage='train',
    )
  distributions = distributions.filter(pa.array(keep))
  originals = origin[keep] != 'augmented'
  if originals.any():  # originals take the run's one level definition
    level_of = dict(
      zip(tables.column(run.distributions, 'utt_id'), tables.column(run.distributions, 'ambiguity'))
    )
    ids = tables.column(distributions, 'utt_id')
    levels = np.asarray(tables.column(distributions, 'ambiguity'), object)
    levels[originals] = [level_of.get(u) for u in ids[originals]]
    distributions = distributions.set_column(
      distributions.schema.get_field_index('ambiguity'), 'ambiguity', pa.array(levels.tolist(), pa.string())
    )
  log.info(
    f'read the DiME-Aug set {directory}: {int(originals.sum())} original + {int((~originals).sum())} '
    f'augmented examples of split {split!r}',
    stage='train',
  )
  return WrittenSet(utterances=utterances, distributions=distributions, split=split)


def train_pipeline(
  run: RunData, processor: Any, config: TrainConfig, mesh: Mesh
) -> input_pipeline.InputPipeline:
  """The training pipeline: the written DiME-Aug set of ``augmented_train_dir``, or the training
  split with a DiME-Aug plan made here when asked (shuffled per epoch, repeating forever)."""
  data = config.data
  utterances, distributions, plan = run.utterances, run.distributions, None
  if data.augmented_train_dir:
    written = read_written_set(data.augmented_train_dir, run, data.train_split, 'augmented_train_dir')
    utterances, distributions = written.utterances, written.distributions
  elif data.augment:
    plan = dime_aug.plan_augmentation(
      run.utterances,
      run.distributions,
      run.labels,
      run.levels,
      split=data.train_split,
      balance=data.balance,
      size=data.augment_size or None,
      seed=config.seed,
    )
  return input_pipeline.build_pipeline(
    utterances,
    distributions,
    run.labels,
    processor,
    run.prompt,
    pipeline_config(config, mesh),
    split=data.train_split,
    plan=plan,
    seed=config.seed,
  )


def train_iterator(run: RunData, processor: Any, config: TrainConfig, mesh: Mesh) -> Any:
  """The checkpointable iterator over :func:`train_pipeline`'s batches (this process's rows)."""
  return iter(train_pipeline(run, processor, config, mesh).dataset)


@dataclasses.dataclass(frozen=True)
class EvalData:
  """One evaluation set.

  Attributes:
    name: 'dev', 'test', 'test_balanced', ...
    pipeline: its Grain pipeline (one epoch, table order, padding rows masked).
    levels: [N] ambiguity level of each example, aligned with ``pipeline.utt_ids`` (None where the
      example has no human level).
  """

  name: str
  pipeline: input_pipeline.InputPipeline
  levels: np.ndarray


def eval_data(
  run: RunData,
  processor: Any,
  config: TrainConfig,
  mesh: Mesh,
  split: str,
  balanced: bool = False,
  written_dir: str = '',
) -> EvalData:
  """The evaluation set of ``split``: its utterances, or the DiME-Aug balanced set built of them
  (read from ``written_dir`` when given, else built here).

  Levels: the distributions' ``ambiguity`` (the run's definition on human entropy) for originals, the
  level the target landed in for the balanced set's augmented rows.
  """
  data = config.data
  utterances, distributions, eval_set = run.utterances, run.distributions, None
  if balanced and written_dir:
    written = read_written_set(written_dir, run, split, 'eval_set_dirs')
    utterances, distributions = written.utterances, written.distributions
  elif balanced:
    eval_set = dime_aug.build_eval_set(
      run.utterances,
      run.distributions,
      run.labels,
      run.levels,
      split=split,
      balance=data.balance,
      size=data.eval_size or None,
      seed=config.seed,
    )
  pipeline = input_pipeline.build_pipeline(
    utterances,
    distributions,
    run.labels,
    processor,
    run.prompt,
    pipeline_config(config, mesh),
    split=split,
    plan=eval_set,
    originals=eval_set is None,
    seed=None,
    num_epochs=1,
  )
  source = distributions if eval_set is None else eval_set
  name_of_level = 'ambiguity' if eval_set is None else 'level'
  level_of = dict(zip(tables.column(source, 'utt_id'), tables.column(source, name_of_level)))
  levels = np.asarray([level_of.get(u) for u in pipeline.utt_ids], dtype=object)
  return EvalData(name=f'{split}_balanced' if balanced else split, pipeline=pipeline, levels=levels)
