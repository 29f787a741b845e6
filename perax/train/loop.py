"""The training loop: sharded steps, metrics per step, dev evaluation, Orbax checkpoints; resumable.

  result = train(config, workdir)

- Resumes from the latest checkpoint in ``<workdir>/checkpoints`` when there is one: train state and
  the Grain iterator's position are restored, and ``metrics.jsonl`` is cut back to the restored
  step, so a run killed and resumed writes the same losses as one that never stopped.
- Compiles the step for the first batch before the loop (``jit(...).lower(...).compile()``) and
  logs its memory analysis; a batch of another audio bucket compiles once more, when it first comes.
- Writes one JSON line per step to ``<workdir>/metrics.jsonl``: step, loss, grad_norm,
  learning_rate, examples (real rows), seconds (wall time since the previous line: the step time
  once the loop runs steadily). Metrics are fetched one step late, so the host prepares the next
  batch while the devices run the current step.
- Every ``checkpoint_every`` steps and at the end: evaluates the dev split (when the config names
  one) into ``<workdir>/dev_metrics.jsonl`` and saves a checkpoint ranked by ``best_metric``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax

from perax.core import atomic
from perax.core.progress import Progress
from perax.train import data as data_lib
from perax.train import evaluate as evaluate_lib
from perax.train import step as step_lib
from perax.train.setup import setup_run

METRICS_FILE = 'metrics.jsonl'
DEV_METRICS_FILE = 'dev_metrics.jsonl'


@dataclasses.dataclass
class TrainResult:
  """What a call of :func:`train` did.

  Attributes:
    workdir: the run's directory.
    start_step: the step it resumed from (0 for a fresh run).
    final_step: the last step it completed.
    losses: {step: loss} of the steps this call ran.
    dev: {step: dev metrics ('all' level)} of the evaluations this call ran.
    best_step: the kept checkpoint with the best dev metric (the latest without one).
    memory: the compiled train step's memory analysis, one line per batch shape.
  """

  workdir: str
  start_step: int
  final_step: int
  losses: dict[int, float]
  dev: dict[int, dict]
  best_step: int | None
  memory: list[str]


def _cut_jsonl(path: str, last_step: int) -> None:
  """Keeps the lines of ``path`` up to step ``last_step`` (a resumed run rewrites the rest)."""
  if not os.path.exists(path):
    return
  with open(path, encoding='utf-8') as f:
    kept = [line for line in f if line.strip() and json.loads(line)['step'] <= last_step]
  atomic.write_text(path, ''.join(kept))


def _append_jsonl(path: str, record: dict) -> None:
  with open(path, 'a', encoding='utf-8') as f:
    f.write(json.dumps(record) + '\n')


def _config_dict(config: Any) -> dict:
  return json.loads(config.to_json()) if hasattr(config, 'to_json') else dict(config)


def train(
  config: Any, workdir: str, *, stop_at_step: int | None = None, echo: Callable[[str], None] = print
) -> TrainResult:
  """Trains (or resumes training) the distributional model that ``config`` describes.

  Args:
    config: the run's config (configs/demo.py documents the fields).
    workdir: the run's directory: metrics, checkpoints, and generated demo inputs.
    stop_at_step: stop after this step without saving, as a preempted job would (the saves already
      started are completed); None runs to ``config.total_steps``.
    echo: receives progress lines.

  Returns:
    A :class:`TrainResult`.
  """
  setup = setup_run(config, workdir, echo)
  checkpointer = setup.checkpointer()
  train_iterator = data_lib.train_iterator(setup.run, setup.processor, config, setup.mesh)
  metrics_path = os.path.join(workdir, METRICS_FILE)
  dev_path = os.path.join(workdir, DEV_METRICS_FILE)
  start_step = checkpointer.latest_step() or 0
  if start_step:
    setup.state = checkpointer.restore(start_step, setup.state, setup.shardings, train_iterator)
    echo(f'resumed from the checkpoint of step {start_step}')
  _cut_jsonl(metrics_path, start_step)
  _cut_jsonl(dev_path, start_step)

  step_fn = step_lib.make_train_step(
    setup.graphdef,
    loss=config.loss,
    tx=setup.tx,
    schedule=setup.schedule,
    mesh=setup.mesh,
    num_microbatches=config.num_microbatches,
    class_weights=setup.class_weights(),
  )
  trainer = step_lib.train_step_compiler(step_fn, setup.shardings, setup.mesh)
  dev = None
  if setup.has_dev():
    dev = data_lib.eval_data(setup.run, setup.processor, config, setup.mesh, config.data.dev_split)
  predictor = step_lib.predict_step_compiler(
    step_lib.make_predict_step(setup.graphdef, setup.mesh),
    setup.shardings.params,
    setup.shardings.frozen,
    setup.mesh,
  )
  result = TrainResult(
    workdir=workdir,
    start_step=start_step,
    final_step=start_step,
    losses={},
    dev={},
    best_step=None,
    memory=[],
  )
  last_step = config.total_steps if stop_at_step is None else min(stop_at_step, config.total_steps)
  state = setup.state
  batch = None
  if start_step < last_step:
    batch = step_lib.device_batch(next(train_iterator), step_lib.TRAIN_INPUTS, setup.mesh)
    trainer.compile(state, batch)
    echo(f'compiled the train step: {next(iter(trainer.memory.values()))}')
  progress = Progress(total=last_step - start_step, unit='step', what='train', print_fn=echo)
  clock = [time.perf_counter()]

  def record(step: int, device_metrics) -> dict[str, float]:
    """Fetches one step's metrics (waiting for that step only) and appends its metrics line."""
    values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    now = time.perf_counter()
    _append_jsonl(metrics_path, {'step': step, **values, 'seconds': now - clock[0]})
    clock[0] = now
    result.losses[step] = values['loss']
    progress.update(1)
    return values

  # Metrics are fetched one step late, so the host prepares the next batch while a step runs.
  pending = None
  for step in range(start_step + 1, last_step + 1):
    if batch is None:
      batch = step_lib.device_batch(next(train_iterator), step_lib.TRAIN_INPUTS, setup.mesh)
    state, metrics = trainer(state, batch)
    batch = None
    if pending is not None:
      record(*pending)
    pending = (step, metrics)
    result.final_step = step
    preempted = step == last_step and stop_at_step is not None and step < config.total_steps
    save = not preempted and (step % config.checkpoint_every == 0 or step == config.total_steps)
    if not (preempted or save or step == last_step):
      continue
    loss = record(*pending)['loss']
    pending = None
    if save:
      dev_metrics = None
      if dev is not None:
        predictions = evaluate_lib.predict(dev, predictor, state.params, state.frozen, setup.mesh, echo)
        dev_metrics = evaluate_lib.evaluate_set(predictions)['all']
        result.dev[step] = dev_metrics
        _append_jsonl(dev_path, {'step': step, **evaluate_lib.json_ready(dev_metrics)})
      ranked = None
      if dev_metrics is not None and config.best_metric:
        ranked = {config.best_metric: dev_metrics[config.best_metric]}
      checkpointer.save(step, state, train_iterator, config=_config_dict(config), metrics=ranked)
      echo(
        f'step {step}: loss {loss:.4f}'
        + ('' if ranked is None else f', dev {config.best_metric} {ranked[config.best_metric]:.4f}')
        + '; checkpoint saved'
      )
  progress.close()
  checkpointer.wait()
  result.best_step = checkpointer.best_step() or checkpointer.latest_step()
  checkpointer.close()
  result.memory = list(trainer.memory.values())
  return result
