"""The stage bodies: each does one stage's work with the stage APIs and returns its outputs (paths).

Bodies take explicit inputs (paths of upstream outputs, settings) and write only under the directory
they are given, so perax.pipeline.stages can key, skip, clear and resume them. Messages go through
perax.core.log, tagged with the stage.
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import pyarrow as pa

from perax import analysis
from perax import distributions as dist
from perax.augment import augmented_set
from perax.core import atomic, jsonio, log
from perax.core.errors import InputError
from perax.data import corpora, tables
from perax.data import labels as labels_lib
from perax.data.corpora import demo as demo_corpus
from perax.models import convert, loading, tiny
from perax.pipeline.config import PipelineConfig
from perax.raters import prompts as prompts_lib
from perax.raters import proxies

DEMO_COMPLETE = '.complete'
# How perax.distributions (before LevelDefinition records) names fitted edges: 'tertiles of split train (120 items)'.
_TERTILES_OF = re.compile(
  r'^tertiles of (?:split (?P<split>\S+) \((?P<n>\d+) items\)|all (?P<n_all>\d+) items)'
)


def with_messages(function: Callable, stage: str, *args, **kwargs) -> Any:
  """Calls a stage API, routing its message callback (``echo`` / ``print_fn``, where it still takes
  one) into perax.core.log under ``stage``."""
  parameters = inspect.signature(function).parameters
  for name in ('echo', 'print_fn'):
    if name in parameters and name not in kwargs:
      kwargs[name] = lambda text, stage=stage: [
        log.info(line, stage=stage) for line in str(text).splitlines()
      ]
  return function(*args, **kwargs)


def _replace_dir(partial: str, final: str) -> None:
  """Moves a finished directory into place (removing what was there), so readers see all or nothing."""
  if os.path.exists(final):
    shutil.rmtree(final)
  os.replace(partial, final)


def demo_corpus_dir(data_dir: str, seed: int) -> str:
  """The generated demo corpus under ``data_dir``, complete: a kill while generating is redone.

  The corpus's tables name its wav files by absolute path, so it is generated in place and marked
  complete (``.complete``, holding the seed) only once generation returned. A directory without the
  mark is a generation that was killed: it is removed and generated again (issue 14, defect 1).
  """
  final = os.path.join(data_dir, corpora.DEMO_DIRNAME)
  mark = os.path.join(final, DEMO_COMPLETE)
  if os.path.exists(mark):
    return final
  shutil.rmtree(final, ignore_errors=True)
  log.info(f'generating the demo corpus in {final} (seed {seed})', stage='prepare')
  demo_corpus.generate(final, seed=seed)
  atomic.write_text(mark, f'{seed}\n')
  return final


def prepare(config: PipelineConfig, data_dir: str) -> dict:
  """The corpus's tables: utterances, votes (and reference_votes) under ``data_dir``."""
  corpus_path = config.corpus_path
  if config.corpus == 'demo' and corpus_path is None:
    corpus_path = demo_corpus_dir(data_dir, config.seed)
  return with_messages(
    corpora.prepare,
    'prepare',
    config.corpus,
    corpus_path,
    data_dir,
    label_set=config.resolved_label_set(),
    lenient=config.lenient,
    seed=config.seed,
    **dict(config.corpus_options),
  )


def checkpoint(config: PipelineConfig, out_dir: str) -> dict:
  """The model: the given checkpoint, or a tiny random one made in HF format and converted."""
  if config.checkpoint:
    return {'checkpoint': config.checkpoint}
  hf_dir = os.path.join(out_dir, 'hf_checkpoint')
  shutil.rmtree(f'{hf_dir}.partial', ignore_errors=True)
  tiny.make_tiny_checkpoint(f'{hf_dir}.partial', seed=config.seed)
  _replace_dir(f'{hf_dir}.partial', hf_dir)
  log.info(f'created a tiny random Qwen2-Audio checkpoint in HF format: {hf_dir}', stage='checkpoint')
  if jax.process_count() > 1:
    # Orbax's saves wait for every process, but this stage runs on process 0 alone: every process
    # reads the HF directory instead, converting on the fly (perax.models.loading).
    return {'checkpoint': hf_dir, 'hf_checkpoint': hf_dir}
  converted = os.path.join(out_dir, 'checkpoint')
  shutil.rmtree(converted, ignore_errors=True)  # a conversion killed after its rename: redo it
  convert.convert_checkpoint(hf_dir, converted, dtype='float32')
  log.info(f'converted it to {converted}', stage='checkpoint')
  return {'checkpoint': converted, 'hf_checkpoint': hf_dir}


def proxies_job_settings(config: PipelineConfig) -> dict:
  """The proxy sampling settings the pipeline passes to ProxyJob (and keys the stage by)."""
  return {
    'votes_per_utterance': config.votes_per_utterance,
    'temperature': config.temperature,
    'top_k': config.top_k,
    'top_p': config.top_p,
    'max_new_tokens': config.max_new_tokens,
    'seed': config.seed,
  }


def generate_proxies(config: PipelineConfig, checkpoint_dir: str, utterances: str, out_dir: str) -> dict:
  """Proxy votes (sample mode) and label scores (score mode) for every utterance of the corpus."""
  label_set = labels_lib.get_label_set(config.resolved_label_set())
  prompts = tuple(prompts_lib.load_prompts(config.prompts_config, config.prompt_ids))
  model, _, processor = loading.load_model(checkpoint_dir, dtype=config.dtype)  # once for both modes
  manifest = tables.read_utterances(utterances)
  outputs = {}
  for mode in proxies.MODES:
    job = proxies.ProxyJob(
      model_name=proxies.model_name(checkpoint_dir),
      label_set=label_set,
      prompts=prompts,
      mode=mode,
      batch_size=config.batch_size,
      **proxies_job_settings(config),
    )
    result = with_messages(
      proxies.generate,
      'proxies',
      job,
      manifest,
      os.path.join(out_dir, mode),
      model,
      processor,
    )
    log.info(f'{mode}: {result.rows} rows; {result.skipped.summary()}', stage='proxies')
    outputs[mode] = result.output
  return outputs


# What each role's split may be called: perax's names, then corpus spellings (MSP-Podcast: Train, Development).
SPLIT_ROLES = {'train': ('train',), 'dev': ('dev', 'development', 'validation')}


def split_name(role: str, utterances: str) -> str | None:
  """The corpus's name for split ``role`` ('train' or 'dev'), matched case-insensitively; None when absent."""
  present = {str(s).lower(): str(s) for s in set(tables.column(tables.read_utterances(utterances), 'split'))}
  for candidate in SPLIT_ROLES[role]:
    if candidate in present:
      return present[candidate]
  return None


def fold_utterances(utterances: str, fold: str, out_path: str) -> str:
  """The utterances table of one cross-validation fold: fold ``fold`` is 'test', the rest 'train'.

  Raises:
    InputError: no utterance has fold ``fold`` (the folds present are named).
  """
  table = tables.read_utterances(utterances)
  folds = tables.column(table, 'fold').astype(object)
  if fold not in set(folds):
    raise InputError(
      f'no utterance has fold {fold!r}; folds: {sorted({str(f) for f in folds})}', path=utterances
    )
  split = np.where(folds == fold, 'test', 'train')
  table = table.set_column(
    table.schema.get_field_index('split'), 'split', pa.array(split.tolist(), pa.string())
  )
  return tables.write_table(table, out_path)


def level_definition(info: Mapping[str, Any]) -> dist.LevelDefinition:
  """The run's level definition from a distributions.json record (its LevelDefinition record when
  present, else its edges and where they came from)."""
  for key in ('level_definition', 'levels'):
    if isinstance(info.get(key), Mapping) and 'edges' in info[key]:
      return dist.LevelDefinition.from_json(info[key])
  edges_from = str(info.get('edges_from', ''))
  fitted = _TERTILES_OF.match(edges_from)
  if fitted:
    return dist.LevelDefinition(
      edges=tuple(info['edges']),
      source='tertiles',
      split=fitted['split'],
      fitted_on=int(fitted['n'] or fitted['n_all']),
    )
  if edges_from.startswith('fixed'):
    return dist.LevelDefinition(edges=tuple(info['edges']), source='fixed')
  return dist.LevelDefinition(edges=tuple(info['edges']), source='tertiles', split=None)


def build_distributions(
  config: PipelineConfig, utterances: str, votes: str, scores: str, out_dir: str, stage: str
) -> dict:
  """Human-only distributions (the evaluation reference) and human + proxy ones (training targets)."""
  utterance_table = tables.read_utterances(utterances)
  human = tables.read_votes(votes)
  score_table = tables.read_table(scores)
  label_set = config.resolved_label_set()
  variants = {
    'human': dict(human_votes=human),
    'combined': dict(human_votes=human, synthetic_scores=score_table, combine=config.combine),
  }
  outputs: dict[str, Any] = {'utterances': utterances}
  levels = None
  if config.level_edges is not None:
    levels = dist.LevelDefinition(edges=tuple(config.level_edges), source='fixed')
  train_split = split_name('train', utterances) or 'train'
  for name, inputs in variants.items():
    table, info = dist.build_distributions(
      label_set=label_set,
      utterances=utterance_table,
      seed=config.seed,
      level_definition=levels,
      levels_from_split=train_split,
      **inputs,
    )
    if levels is None:  # the human variant fixes the run's one level definition; the rest reuse it
      levels = dist.LevelDefinition.from_json(info['levels'])
    path, info_path = dist.write_distributions(table, info, os.path.join(out_dir, name))
    log.info(f'{name}:\n{dist.format_summary(info)}', stage=stage)
    outputs[name] = path
    outputs[f'{name}_info'] = info_path
  return outputs


def augment(
  config: PipelineConfig,
  utterances: str,
  targets: str,
  levels: dist.LevelDefinition,
  test_splits: Sequence[str],
  out_dir: str,
  stage: str,
) -> dict:
  """DiME-Aug written out: the balanced training split and a balanced evaluation set per test split,
  all under the run's one level definition. Training and evaluation read these sets (never a second
  plan): see perax.pipeline.training.training_config."""
  utterance_table = tables.read_utterances(utterances)
  distributions = tables.read_table(targets)
  common = dict(seed=config.seed, levels=levels)
  outputs = {
    'train': with_messages(
      augmented_set.augment,
      stage,
      utterance_table,
      distributions,
      os.path.join(out_dir, 'train'),
      split=split_name('train', utterances) or 'train',
      **common,
    ),
  }
  for split in test_splits:
    outputs[f'eval_{split}'] = with_messages(
      augmented_set.augment,
      stage,
      utterance_table,
      distributions,
      os.path.join(out_dir, f'eval_{split}'),
      split=split,
      eval_set=True,
      **common,
    )
  return outputs


def analyze(config: PipelineConfig, data: Mapping[str, str], scores: str, out_dir: str, root: str) -> dict:
  """Alignment of proxies with human votes, and the sparse-vs-dense study (perax.analysis); the
  sources it records are named relative to the run directory ``root``."""
  reference = data.get('reference_votes')
  inputs = analysis.Inputs(
    human=tables.read_votes(data['votes']),
    proxy=tables.read_table(scores),
    reference=tables.read_votes(reference) if reference else None,
    utterances=tables.read_utterances(data['utterances']),
    sources={  # relative to the run directory: the analysis records them, and a run dir can move
      'human votes': os.path.relpath(data['votes'], root),
      'proxy scores': os.path.relpath(scores, root),
      'dense reference': os.path.relpath(reference, root) if reference else '(none)',
    },
    proxy_path=scores,
  )
  settings = analysis.Settings(
    label_set=config.resolved_label_set(),
    sparse_k=tuple(config.sparse_k),
    repeats=config.repeats,
    bootstrap=config.bootstrap,
    seed=config.seed,
    levels_from=split_name('train', data['utterances']) or 'train',
  )
  outputs = analysis.analyze(inputs, settings, out_dir, command='perax.pipeline (analyze stage)')
  return {
    'report': outputs.report.html,
    'summary': outputs.summary,
    'tables': {name: paths['json'] for name, paths in outputs.tables.items()},
    'plots': dict(outputs.plots),
    'has_reference': reference is not None,
  }


def read_info(path: str) -> dict:
  return jsonio.read_json(path)
