"""Predictions of a trained distributional model on an evaluation set, and their metrics.

For one set (perax.train.data.EvalData) :func:`predict` runs the jitted prediction step over every
batch and keeps the real rows; :func:`evaluate_set` scores them against the targets with
perax.distributions.metrics, overall and per ambiguity level, and :func:`write_evaluation` writes

  predictions_<set>.parquet   utt_id, p_<label> per label, ambiguity
  metrics_<set>.json          {set, step, n, labels, metrics: {level: {metric: value}}}, NaN as null
  metrics_<set>.md            the same metrics as a table, levels as rows.

:func:`evaluate_checkpoint` restores a run's checkpoint (best, latest or a step) and evaluates each
test split (``config.data.test_splits``) and the DiME-Aug balanced set of each (built here, or read
from ``config.data.eval_set_dirs``). Targets are human-vote targets unless the config asks for
proxy-only ones (perax.train.data). In a multi-process run every process predicts its rows, the
predictions are gathered, and process 0 writes the files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import pyarrow as pa
from jax.experimental import multihost_utils

from perax.core import atomic, jsonio, log
from perax.core.errors import InputError
from perax.core.locks import RunLock
from perax.core.progress import Progress
from perax.data import tables
from perax.distributions import metrics as metrics_lib
from perax.train import data as data_lib
from perax.train import step as step_lib
from perax.train.config import TrainConfig
from perax.train.setup import RunSetup, setup_run

# Columns of the readable table, in order (all keys of perax.distributions.metrics.distribution_metrics are in
# the JSON).
TABLE_METRICS = (
  'n',
  'kl',
  'js_divergence',
  'bhattacharyya',
  'r2',
  'cosine',
  'accuracy',
  'unweighted_accuracy',
  'macro_f1',
)
LEVEL_ORDER = ('low', 'medium', 'high', metrics_lib.ALL)


@dataclasses.dataclass(frozen=True)
class Predictions:
  """Predicted and target distributions of one evaluation set's examples, in pipeline order.

  Attributes:
    utt_ids: [N] example ids.
    probs: [N, C] float32 predicted distributions.
    targets: [N, C] float32 target distributions.
    levels: [N] ambiguity level per example (None where unknown).
  """

  utt_ids: np.ndarray
  probs: np.ndarray
  targets: np.ndarray
  levels: np.ndarray


def _host(x) -> np.ndarray:
  """A global array (or this process's rows of one) gathered whole on every host."""
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def predict(
  eval_data: data_lib.EvalData,
  predictor: step_lib.StepCompiler,
  params: Any,
  frozen: Any,
  mesh: jax.sharding.Mesh,
) -> Predictions:
  """Runs ``predictor`` (perax.train.step.predict_step_compiler) over one pass of the set."""
  pipeline = eval_data.pipeline
  progress = Progress(
    total=pipeline.batches_per_epoch,
    unit='batch',
    what=f'eval {eval_data.name}',
    print_fn=log.info if jax.process_index() == 0 else lambda _: None,
  )
  indices, probs, targets = [], [], []
  for batch in pipeline.dataset:
    inputs = step_lib.device_batch(batch, step_lib.MODEL_INPUTS, mesh)
    probs.append(_host(predictor(params, frozen, inputs)))
    targets.append(_host(batch['targets']))
    indices.append(_host(batch['example_index']))
    progress.update(1)
  progress.close()
  index = np.concatenate(indices)
  real = index >= 0
  index = index[real]
  return Predictions(
    utt_ids=pipeline.utt_ids[index],
    probs=np.concatenate(probs)[real],
    targets=np.concatenate(targets)[real],
    levels=eval_data.levels[index],
  )


def evaluate_set(predictions: Predictions) -> dict[str, Mapping[str, float]]:
  """perax.distributions.metrics.metrics_by_level of the predictions against their targets."""
  return metrics_lib.metrics_by_level(
    predictions.targets.astype(np.float64), predictions.probs.astype(np.float64), predictions.levels
  )


def metrics_table(by_level: Mapping[str, Mapping[str, float]]) -> str:
  """A Markdown table: one row per ambiguity level (then all), :data:`TABLE_METRICS` as columns."""
  lines = ['| level | ' + ' | '.join(TABLE_METRICS) + ' |', '|---|' + '---:|' * len(TABLE_METRICS)]
  for level in LEVEL_ORDER:
    cells = []
    for name in TABLE_METRICS:
      value = by_level[level][name]
      cells.append(str(value) if isinstance(value, int) else '' if math.isnan(value) else f'{value:.4f}')
    lines.append(f'| {level} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def write_evaluation(
  out_dir: str,
  name: str,
  predictions: Predictions,
  labels: tuple[str, ...],
  by_level: Mapping[str, Mapping[str, float]],
  step: int,
) -> dict[str, str]:
  """Writes predictions_<name>.parquet, metrics_<name>.json and metrics_<name>.md; returns paths."""
  os.makedirs(out_dir, exist_ok=True)
  columns = {'utt_id': pa.array(predictions.utt_ids.tolist(), pa.string())}
  columns.update(zip(tables.label_columns(labels), predictions.probs.astype(np.float64).T))
  columns['ambiguity'] = pa.array(predictions.levels.tolist(), pa.string())
  paths = {
    'predictions': tables.write_table(
      pa.table(columns), os.path.join(out_dir, f'predictions_{name}.parquet')
    ),
    'metrics': os.path.join(out_dir, f'metrics_{name}.json'),
    'table': os.path.join(out_dir, f'metrics_{name}.md'),
  }
  report = {
    'set': name,
    'step': step,
    'n': len(predictions.utt_ids),
    'labels': list(labels),
    'metrics': by_level,
  }
  jsonio.write_json(paths['metrics'], report)
  atomic.write_text(
    paths['table'], f'Evaluation set {name}, checkpoint step {step}\n\n{metrics_table(by_level)}\n'
  )
  return paths


def restore_for_eval(setup: RunSetup, which: str | int) -> int:
  """Loads a saved train state into ``setup.state``; returns its step.

  Args:
    setup: a run assembled by perax.train.setup.setup_run (same config as the saved run).
    which: 'best' (by the dev metric; the latest without one), 'latest', or a step number.

  Raises:
    InputError: the run has no checkpoint (or not that step).
  """
  checkpointer = setup.checkpointer()
  try:
    if which == 'best':
      step = checkpointer.best_step() or checkpointer.latest_step()
    elif which == 'latest':
      step = checkpointer.latest_step()
    else:
      step = int(which)
    if step is None or step not in checkpointer.all_steps():
      raise InputError(
        f'no checkpoint {which!r} (saved steps: {sorted(checkpointer.all_steps())}); train first',
        path=checkpointer.directory,
      )
    setup.state = checkpointer.restore(step, setup.state, setup.shardings)
  finally:
    checkpointer.close()
  return step


def evaluate_checkpoint(
  config: TrainConfig,
  workdir: str,
  which: str | int = 'best',
  out_dir: str | None = None,
  balanced: bool = True,
) -> dict[str, dict]:
  """Evaluates a run's checkpoint on each test split and on the balanced set of each.

  The workdir is locked meanwhile (perax.core.locks.RunLock, by process 0), so a training run cannot
  write it at the same time.

  Args:
    config: the run's config.
    workdir: the run's directory.
    which: 'best', 'latest' or a step (see :func:`restore_for_eval`).
    out_dir: where files go; default <workdir>/eval_<step>.
    balanced: also evaluate the DiME-Aug balanced evaluation sets.

  Returns:
    {set name: metrics by level}; set names are the test split names and ``<split>_balanced``.
  """
  lock = RunLock(workdir, 'training workdir') if jax.process_index() == 0 else contextlib.nullcontext()
  with lock:
    return _evaluate_checkpoint(config, workdir, which, out_dir, balanced)


def _evaluate_checkpoint(
  config: TrainConfig, workdir: str, which: str | int, out_dir: str | None, balanced: bool
) -> dict[str, dict]:
  setup = setup_run(config, workdir)
  step = restore_for_eval(setup, which)
  out_dir = out_dir or os.path.join(workdir, f'eval_{step}')
  predictor = step_lib.predict_step_compiler(
    step_lib.make_predict_step(setup.graphdef, setup.mesh),
    setup.shardings.params,
    setup.shardings.frozen,
    setup.mesh,
  )
  data = config.data
  written = dict(zip(data.test_splits, data.eval_set_dirs))
  sets = []
  for split in data.test_splits:
    sets.append(data_lib.eval_data(setup.run, setup.processor, config, setup.mesh, split))
    if balanced:
      sets.append(
        data_lib.eval_data(
          setup.run,
          setup.processor,
          config,
          setup.mesh,
          split,
          balanced=True,
          written_dir=written.get(split, ''),
        )
      )
  results = {}
  for eval_data in sets:
    predictions = predict(eval_data, predictor, setup.state.params, setup.state.frozen, setup.mesh)
    by_level = evaluate_set(predictions)
    if jax.process_index() == 0:
      paths = write_evaluation(out_dir, eval_data.name, predictions, setup.run.labels, by_level, step)
      log.info(
        f'{eval_data.name} (checkpoint step {step}, {len(predictions.utt_ids)} examples):\n'
        f'{metrics_table(by_level)}\nwrote {", ".join(paths.values())}',
        stage='evaluate',
      )
    results[eval_data.name] = by_level
  return results
