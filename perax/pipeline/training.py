"""The training-side stage bodies: the training config of a plan, training, and evaluation against
each reference (human votes alone by default; human + proxy targets as a labelled extra).
"""

from __future__ import annotations

import copy
import importlib.util
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from perax.analysis import plots
from perax.core.errors import InputError
from perax.pipeline.bodies import split_name, with_messages
from perax.pipeline.config import PipelineConfig
from perax.train import evaluate as evaluate_lib
from perax.train import loop

# Evaluation references: the targets a model is scored against.
HUMAN, HUMAN_PROXY = 'human', 'human+proxy'
REFERENCES = (HUMAN, HUMAN_PROXY)
DISTRIBUTION_OF = {HUMAN: 'human', HUMAN_PROXY: 'combined'}


def load_train_config(path: str) -> Any:
  """The ``get_config()`` of a training config file."""
  if not os.path.isfile(path):
    raise InputError('no training config here', path=path)
  spec = importlib.util.spec_from_file_location('perax_train_config', path)
  if spec is None or spec.loader is None:
    raise InputError('not a Python training config', path=path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def training_config(
  config: PipelineConfig,
  checkpoint_dir: str,
  utterances: str,
  targets: str,
  test_splits: Sequence[str] = ('test',),
  augment_dir: str | None = None,
  levels_path: str | None = None,
) -> Any:
  """The training run's config: ``config.train_config`` pointed at this run's tables and model.

  The pipeline owns the split: its utterances table says which rows are train and test (a fold's
  table for cross-validation), so the config's own ``test_fold`` is cleared. With ``augment_dir``,
  training and evaluation read the DiME-Aug sets the augment stage wrote there (``train/`` and
  ``eval_<split>/`` per test split) instead of planning DiME-Aug a second time; with ``levels_path``
  (a distributions.json), they apply the run's one ambiguity level definition.
  """
  train_config = load_train_config(config.train_config)
  train_config.seed = config.seed
  train_config.model.checkpoint = checkpoint_dir
  train_config.data.utterances = utterances
  train_config.data.distributions = targets
  train_config.data.label_set = config.resolved_label_set()
  train_config.data.test_fold = ''
  train_config.data.dev_fold = ''
  train_config.data.test_splits = tuple(test_splits)
  if augment_dir is not None:
    train_config.data.augmented_train_dir = os.path.join(augment_dir, 'train')
    train_config.data.eval_set_dirs = tuple(os.path.join(augment_dir, f'eval_{s}') for s in test_splits)
  if levels_path is not None:
    train_config.data.level_definition = levels_path
  train_config.data.train_split = split_name('train', utterances) or train_config.data.train_split
  if train_config.data.dev_split:  # none in a fold's table: the best checkpoint is then the last
    train_config.data.dev_split = split_name('dev', utterances) or ''
  if config.train_steps is not None:
    train_config.total_steps = config.train_steps
  return train_config


def train(train_config: Any, workdir: str, stage: str) -> dict:
  """Trains (resuming from the workdir's checkpoints); the loss record covers every step of the run.

  The first loss and the loss plot come from metrics.jsonl, not from this call's steps, so a run
  resumed after a kill reports the same as one that was not (issue 14, defect 2).
  """
  result = with_messages(loop.train, stage, train_config, workdir)
  losses = loop.loss_history(workdir)
  steps = sorted(losses)
  figure = None
  if steps and jax.process_index() == 0:  # process 0 writes the run's files
    figure = plots.loss_curve(steps, [losses[s] for s in steps], os.path.join(workdir, 'loss.png'))
  return {
    'workdir': workdir,
    'final_step': result.final_step,
    'best_step': result.best_step,
    'first_step': steps[0] if steps else None,
    'first_loss': losses[steps[0]] if steps else None,
    'last_loss': losses[steps[-1]] if steps else None,
    'loss_plot': figure,
  }


def evaluate(
  train_config: Any,
  workdir: str,
  targets: Mapping[str, str],
  test_splits: Sequence[str],
  out_dir: str,
  stage: str,
) -> dict:
  """The best checkpoint on each test split (plain and DiME-Aug balanced), against each reference.

  Args:
    targets: {reference: distributions path}: HUMAN (human votes only, the default reference) and
      HUMAN_PROXY (the training targets, human votes combined with proxy scores).

  Returns:
    {'metrics': {reference: {set name: metrics by level}}, 'files': {reference: {set: metrics json}}}.
  """
  metrics: dict[str, dict] = {}
  files: dict[str, dict] = {}
  written = dict(zip(train_config.data.test_splits, train_config.data.eval_set_dirs))
  for reference in REFERENCES:
    metrics[reference], files[reference] = {}, {}
    for split in test_splits:
      config = copy.deepcopy(train_config)
      config.data.distributions = targets[reference]
      config.data.test_splits = (split,)
      config.data.eval_set_dirs = (written[split],) if split in written else ()
      # The written balanced set carries the training targets (human + proxy): it is scored against
      # that reference only; the human reference scores the plain test split.
      balanced = reference == HUMAN_PROXY
      where = os.path.join(out_dir, reference.replace('+', '_'), split)
      results = with_messages(
        evaluate_lib.evaluate_checkpoint,
        stage,
        config,
        workdir,
        which='best',
        out_dir=where,
        balanced=balanced,
      )
      for name, by_level in results.items():
        metrics[reference][name] = by_level
        files[reference][name] = os.path.join(where, f'metrics_{name}.json')
  return {'metrics': metrics, 'files': files, 'out_dir': out_dir}
