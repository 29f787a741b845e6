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
- Locks the workdir (perax.core.locks.RunLock): a second run on it stops at once, naming the pid
  that holds it. A NaN or infinite loss stops the run with an InputError naming the step.
- ``TrainResult.losses`` (and :func:`loss_history`) hold every step from 1 on, across resumes.
- Multi-process runs (launch/train.py --num_processes ...): every process feeds its rows of each
  global batch, runs the same steps and saves its part of each checkpoint (Orbax synchronises the
  processes); process 0 alone holds the lock and writes metrics.jsonl and dev_metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time

import jax

from perax.core import atomic, jsonio, log
from perax.core.errors import InputError
from perax.core.locks import RunLock
from perax.core.progress import Progress
from perax.train import data as data_lib
from perax.train import evaluate as evaluate_lib
from perax.train import step as step_lib
from perax.train.config import TrainConfig
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
    losses: {step: loss} of every step of the run so far, resumed calls' earlier steps included (read
      from metrics.jsonl; see :func:`loss_history`), so a report after a resumed run starts at step 1.
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


def _read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as error:
        raise InputError(f'not a JSON line: {error.msg}', path=path, line=number) from None
  return records


def loss_history(workdir: str) -> dict[int, float]:
  """{step: loss} of every step logged in ``<workdir>/metrics.jsonl``, from step 1 on, across resumes
  (a resumed run first cuts the file back to its checkpoint, so each step appears once)."""
  return {
    int(r['step']): float('nan') if r['loss'] is None else float(r['loss'])
    for r in _read_jsonl(os.path.join(workdir, METRICS_FILE))
  }


def _cut_jsonl(path: str, last_step: int) -> None:
  """Keeps the lines of ``path`` up to step ``last_step`` (a resumed run rewrites the rest)."""
  if not os.path.exists(path):
    return
  kept = [r for r in _read_jsonl(path) if r['step'] <= last_step]
  atomic.write_text(path, ''.join(json.dumps(r, allow_nan=False) + '\n' for r in kept))


def _append_jsonl(path: str, record: dict) -> None:
  with open(path, 'a', encoding='utf-8') as f:
    f.write(json.dumps(jsonio.jsonable(record), allow_nan=False) + '\n')


def _config_dict(config: TrainConfig) -> dict:
  return json.loads(config.to_json()) if hasattr(config, 'to_json') else dict(config)


def _info(message: str) -> None:
  """A progress line, shown once for a multi-process run (by process 0)."""
  if jax.process_index() == 0:
    log.info(message, stage='train')


def train(config: TrainConfig, workdir: str, *, stop_at_step: int | None = None) -> TrainResult:
  """Trains (or resumes training) the distributional model that ``config`` describes.

  The workdir is locked for the run (perax.core.locks.RunLock, held by process 0): a second run on
  it is refused with the holder's pid. A loss that is NaN or infinite stops the run with an
  InputError naming the step (the checkpoints saved before it stay).

  Args:
    config: the run's config (perax/train/config.py documents the fields).
    workdir: the run's directory: metrics, checkpoints, and generated demo inputs.
    stop_at_step: stop after this step without saving, as a preempted job would (the saves already
      started are completed); None runs to ``config.total_steps``.

  Returns:
    A :class:`TrainResult`.
  """
  lock = RunLock(workdir, 'training workdir') if jax.process_index() == 0 else contextlib.nullcontext()
  with lock:
    return _train(config, workdir, stop_at_step)


def _train(config: TrainConfig, workdir: str, stop_at_step: int | None) -> TrainResult:
  setup = setup_run(config, workdir)
  writer = jax.process_index() == 0
  checkpointer = setup.checkpointer()
  try:
    train_iterator = data_lib.train_iterator(setup.run, setup.processor, config, setup.mesh)
    metrics_path = os.path.join(workdir, METRICS_FILE)
    dev_path = os.path.join(workdir, DEV_METRICS_FILE)
    start_step = checkpointer.latest_step() or 0
    if start_step:
      setup.state = checkpointer.restore(start_step, setup.state, setup.shardings, train_iterator)
      _info(f'resumed from the checkpoint of step {start_step}')
    if writer:
      _cut_jsonl(metrics_path, start_step)
      _cut_jsonl(dev_path, start_step)
    history = {s: v for s, v in loss_history(workdir).items() if s <= start_step}

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
      losses=history,
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
    progress = Progress(
      total=last_step - start_step, unit='step', what='train', print_fn=_info if writer else lambda _: None
    )
    clock = [time.perf_counter()]

    def record(step: int, device_metrics) -> dict[str, float]:
      """Fetches one step's metrics (waiting for that step only), checks the loss, logs the line."""
      values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
      if not math.isfinite(values['loss']):
        saved = checkpointer.latest_step()
        raise InputError(
          f'training diverged: the loss of step {step} is {values["loss"]} (grad norm '
          f'{values["grad_norm"]:.4g}); check the audio for NaN/Inf samples or lower '
          f'config.learning_rate. Last checkpoint: {"none" if saved is None else f"step {saved}"}',
          path=workdir,
        )
      now = time.perf_counter()
      if writer:
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
          predictions = evaluate_lib.predict(dev, predictor, state.params, state.frozen, setup.mesh)
          dev_metrics = evaluate_lib.evaluate_set(predictions)['all']
          result.dev[step] = dev_metrics
          if writer:
            _append_jsonl(dev_path, {'step': step, **dev_metrics})
        ranked = None
        if dev_metrics is not None and config.best_metric:
          ranked = {config.best_metric: dev_metrics[config.best_metric]}
        checkpointer.save(step, state, train_iterator, config=_config_dict(config), metrics=ranked)
        _info(
          f'step {step}: loss {loss:.4f}'
          + ('' if ranked is None else f', dev {config.best_metric} {ranked[config.best_metric]:.4f}')
          + '; checkpoint saved'
        )
    progress.close()
    checkpointer.wait()
    result.best_step = checkpointer.best_step() or checkpointer.latest_step()
    result.memory = list(trainer.memory.values())
    return result
  finally:
    checkpointer.close()
