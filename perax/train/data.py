"""What a training run reads: corpus tables, targets, label set, prompt; and its Grain pipelines.

A run's data config (``config.data``, see configs/demo.py) names an utterances table and a
distributions table (perax.distributions). The demo config leaves both empty: the demo corpus and
its distributions are then generated under ``<workdir>/data``. With ``test_fold`` set (IEMOCAP's
leave-one-session-out folds), the splits are rebuilt from the ``fold`` column: that fold is the
test split, ``dev_fold`` (if any) the dev split, every other fold train; the ambiguity levels are
then recomputed from the human entropy with tertile edges of the new training split.

Evaluation sets are the plain test split and the DiME-Aug balanced set built from it
(perax.augment.dime_aug.build_eval_set); each example has an ambiguity level for per-level metrics: the
distributions' ``ambiguity`` (human votes) for originals, the level the target landed in for the
balanced set's rows.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
from jax.sharding import Mesh

from perax import distributions as dist
from perax.augment import dime_aug, input_pipeline
from perax.core.errors import InputError
from perax.data import corpora, tables
from perax.data import labels as labels_lib
from perax.raters import prompts
from perax.train.mesh import batch_shards

DATA_DIRNAME = 'data'
UTTERANCES_FILE = 'utterances.parquet'
DISTRIBUTIONS_FILE = 'distributions.parquet'


@dataclasses.dataclass(frozen=True)
class RunData:
  """The tables and choices every pipeline of a run is built from.

  Attributes:
    utterances: utterances table (perax.data.tables), splits final.
    distributions: targets (utt_id, p_<label>, entropy_human, ambiguity, ...).
    labels: the label set's labels, in target-column order.
    edges: DiME-Aug's ambiguity edges: tertiles of the training split's target entropy.
    prompt: the question the backbone reads with each clip.
  """

  utterances: pa.Table
  distributions: pa.Table
  labels: tuple[str, ...]
  edges: tuple[float, float]
  prompt: prompts.Prompt


def _generate_demo(out_dir: str, seed: int, label_set: str, echo: Callable[[str], None]) -> tuple[str, str]:
  """Writes the demo corpus and its human-vote distributions into ``out_dir``."""
  paths = corpora.prepare('demo', None, out_dir, label_set=label_set, seed=seed, echo=echo)
  utterances = tables.read_utterances(paths['utterances'])
  table, info = dist.build_distributions(
    tables.read_votes(paths['votes']), label_set=label_set, utterances=utterances, seed=seed
  )
  distributions_path, _ = dist.write_distributions(table, info, out_dir)
  echo(dist.format_summary(info))
  return paths['utterances'], distributions_path


def _table_paths(data: Any, workdir: str, seed: int, echo: Callable[[str], None]) -> tuple[str, str]:
  default_dir = os.path.join(workdir, DATA_DIRNAME)
  utterances = data.utterances or os.path.join(default_dir, UTTERANCES_FILE)
  distributions = data.distributions or os.path.join(default_dir, DISTRIBUTIONS_FILE)
  missing = [p for p in (utterances, distributions) if not os.path.exists(p)]
  if missing and data.corpus == 'demo' and not (data.utterances or data.distributions):
    return _generate_demo(default_dir, seed, data.label_set, echo)
  if missing:
    raise InputError(
      'no such file (set config.data.utterances and config.data.distributions)', path=missing[0]
    )
  return utterances, distributions


def split_by_fold(
  utterances: pa.Table, distributions: pa.Table, test_fold: str, dev_fold: str = ''
) -> tuple[pa.Table, pa.Table]:
  """Rebuilds splits from folds and the ambiguity levels from the new training split.

  Returns:
    (utterances with split = test | dev | train by fold, distributions with ``ambiguity`` recomputed
    from ``entropy_human`` with tertile edges of the training split).
  """
  folds = tables.column(utterances, 'fold')
  if test_fold not in set(folds):
    raise InputError(f'no utterance has fold {test_fold!r}; folds: {sorted(set(map(str, folds)))}')
  split = np.where(folds == test_fold, 'test', np.where(folds == dev_fold, 'dev', 'train'))
  utterances = utterances.set_column(
    utterances.schema.get_field_index('split'), 'split', pa.array(split.tolist(), pa.string())
  )
  train_ids = set(tables.column(utterances, 'utt_id')[split == 'train'])
  entropy = tables.column(distributions, 'entropy_human').astype(np.float64)
  in_train = np.asarray([u in train_ids for u in tables.column(distributions, 'utt_id')])
  known = in_train & ~np.isnan(entropy)
  levels = dist.ambiguity_levels(entropy, dist.tertile_edges(entropy[known]))
  levels = [None if np.isnan(e) else level for e, level in zip(entropy, levels)]
  distributions = distributions.set_column(
    distributions.schema.get_field_index('ambiguity'), 'ambiguity', pa.array(levels, pa.string())
  )
  return utterances, distributions


def load_run_data(data: Any, workdir: str, seed: int, echo: Callable[[str], None] = print) -> RunData:
  """Reads (or, for the demo, first generates) the run's tables and resolves its choices.

  Args:
    data: the ``config.data`` block.
    workdir: the run's directory (where demo tables are generated).
    seed: seeds the demo corpus.
    echo: receives progress lines.

  Raises:
    InputError: a table is missing, lacks the label set's columns, or a fold is unknown.
  """
  utterances_path, distributions_path = _table_paths(data, workdir, seed, echo)
  utterances = tables.read_utterances(utterances_path)
  distributions = tables.read_table(distributions_path)
  if data.test_fold:
    utterances, distributions = split_by_fold(utterances, distributions, data.test_fold, data.dev_fold)
  labels = labels_lib.get_label_set(data.label_set).labels
  missing = [c for c in tables.label_columns(labels) if c not in distributions.column_names]
  if missing:
    raise InputError(
      f'distributions lack the columns {missing} of label set {data.label_set!r}', path=distributions_path
    )
  edges = dime_aug.edges_from_split(utterances, distributions, labels, data.train_split)
  prompt = prompts.load_prompts(data.prompts or None, [data.prompt_id] if data.prompt_id else None)[0]
  return RunData(
    utterances=utterances, distributions=distributions, labels=tuple(labels), edges=edges, prompt=prompt
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


def pipeline_config(config: Any, mesh: Mesh) -> input_pipeline.PipelineConfig:
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


def train_iterator(run: RunData, processor: Any, config: Any, mesh: Mesh) -> Any:
  """The checkpointable iterator over training batches (with the DiME-Aug plan when asked)."""
  data = config.data
  plan = None
  if data.augment:
    plan = dime_aug.plan_augmentation(
      run.utterances,
      run.distributions,
      run.labels,
      run.edges,
      split=data.train_split,
      balance=data.balance,
      size=data.augment_size or None,
      seed=config.seed,
    )
  return input_pipeline.make_train_iterator(
    run.utterances,
    run.distributions,
    run.labels,
    processor,
    run.prompt,
    pipeline_config(config, mesh),
    seed=config.seed,
    split=data.train_split,
    plan=plan,
  )


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
  config: Any,
  mesh: Mesh,
  split: str,
  balanced: bool = False,
  name: str | None = None,
) -> EvalData:
  """The evaluation set of ``split``: its utterances, or the DiME-Aug balanced set built of them."""
  data = config.data
  eval_set = None
  if balanced:
    eval_set = dime_aug.build_eval_set(
      run.utterances,
      run.distributions,
      run.labels,
      run.edges,
      split=split,
      balance=data.balance,
      size=data.eval_size or None,
      seed=config.seed,
    )
  pipeline = input_pipeline.build_pipeline(
    run.utterances,
    run.distributions,
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
  if eval_set is None:
    level_of = dict(
      zip(tables.column(run.distributions, 'utt_id'), tables.column(run.distributions, 'ambiguity'))
    )
  else:
    level_of = dict(zip(tables.column(eval_set, 'utt_id'), tables.column(eval_set, 'level')))
  levels = np.asarray([level_of.get(u) for u in pipeline.utt_ids], dtype=object)
  return EvalData(name=name or (f'{split}_balanced' if balanced else split), pipeline=pipeline, levels=levels)
