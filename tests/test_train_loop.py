"""The training loop on the demo corpus: loss decreases, metrics.jsonl, kill + resume reproduces the
losses exactly, and evaluation writes predictions and metrics that an independent computation
confirms."""

import importlib.util
import json
import os
import pathlib

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.spatial.distance

from perax.data import tables
from perax.models import tiny
from perax.train import data as data_lib
from perax.train import evaluate, loop

DEMO_CONFIG = pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'demo.py'

TOTAL_STEPS = 30
CHECKPOINT_EVERY = 10
STOP_AT = 15


@pytest.fixture(scope='module', autouse=True)
def compilation_cache(tmp_path_factory):
  """JAX's persistent compilation cache for this module: every train() and evaluation builds the
  same step programs anew, and the cache compiles each once."""
  names = (
    'jax_compilation_cache_dir',
    'jax_persistent_cache_min_compile_time_secs',
    'jax_persistent_cache_min_entry_size_bytes',
  )
  saved = {name: getattr(jax.config, name) for name in names}
  jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.mktemp('jax_cache')))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  yield
  for name, value in saved.items():
    jax.config.update(name, value)


@pytest.fixture(scope='module')
def config(tmp_path_factory):
  """The demo config on 8 devices (fsdp), over demo tables and a tiny checkpoint made once."""
  inputs = tmp_path_factory.mktemp('inputs')
  spec = importlib.util.spec_from_file_location('demo_config', DEMO_CONFIG)
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  base = demo.get_config()
  data_lib.load_run_data(base.data, str(inputs), seed=0)
  base.data.utterances = str(inputs / data_lib.DATA_DIRNAME / data_lib.UTTERANCES_FILE)
  base.data.distributions = str(inputs / data_lib.DATA_DIRNAME / data_lib.DISTRIBUTIONS_FILE)
  base.model.checkpoint = tiny.make_tiny_checkpoint(inputs / 'tiny', seed=0)
  base.total_steps = TOTAL_STEPS
  base.checkpoint_every = CHECKPOINT_EVERY
  base.warmup_steps = 2
  base.mesh_shape = (1, -1, 1)
  return base


@pytest.fixture(scope='module')
def uninterrupted(config, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  return loop.train(config, workdir)


def _losses(workdir):
  with open(os.path.join(workdir, loop.METRICS_FILE), encoding='utf-8') as f:
    return {record['step']: record['loss'] for record in map(json.loads, f)}


def test_metrics_file_has_every_step_and_the_loss_decreases(uninterrupted):
  losses = _losses(uninterrupted.workdir)
  assert sorted(losses) == list(range(1, TOTAL_STEPS + 1))
  assert losses == uninterrupted.losses
  # Per-batch losses are noisy (8 examples): compare the first and last five steps' means, and the
  # dev split's divergence at the first and last checkpoints.
  first = np.mean([losses[s] for s in range(1, 6)])
  last = np.mean([losses[s] for s in range(TOTAL_STEPS - 4, TOTAL_STEPS + 1)])
  assert last < 0.85 * first, losses
  dev = uninterrupted.dev
  assert sorted(dev) == list(range(CHECKPOINT_EVERY, TOTAL_STEPS + 1, CHECKPOINT_EVERY))
  assert dev[TOTAL_STEPS]['js_divergence'] < dev[CHECKPOINT_EVERY]['js_divergence']
  assert uninterrupted.memory and 'temp' in uninterrupted.memory[0]


def test_kill_and_resume_reproduces_the_losses_exactly(config, uninterrupted, tmp_path):
  workdir = str(tmp_path)
  killed = loop.train(config, workdir, stop_at_step=STOP_AT)
  assert killed.final_step == STOP_AT
  resumed = loop.train(config, workdir)
  assert resumed.start_step == CHECKPOINT_EVERY
  # Steps after the checkpoint ran twice; metrics.jsonl keeps the resumed run's, and every loss
  # equals the uninterrupted run's bit for bit.
  assert _losses(workdir) == _losses(uninterrupted.workdir)
  rerun = range(CHECKPOINT_EVERY + 1, STOP_AT + 1)
  assert {s: killed.losses[s] for s in rerun} == {s: resumed.losses[s] for s in rerun}
  # The resumed call reports the whole run from step 1 (issue 14: a report's first loss and plot).
  assert resumed.losses == loop.loss_history(workdir) == uninterrupted.losses
  assert sorted(resumed.losses) == list(range(1, TOTAL_STEPS + 1))


def test_evaluate_writes_predictions_and_metrics(config, uninterrupted, tmp_path):
  results = evaluate.evaluate_checkpoint(config, uninterrupted.workdir, 'best', str(tmp_path))
  assert set(results) == {'test', 'test_balanced'}
  distributions = tables.read_table(config.data.distributions)
  utterances = tables.read_utterances(config.data.utterances)
  test_ids = set(tables.column(utterances, 'utt_id')[tables.column(utterances, 'split') == 'test'])
  labels = ('neutral', 'happy', 'sad', 'angry')
  columns = tables.label_columns(labels)

  predictions = pq.read_table(tmp_path / 'predictions_test.parquet')
  assert predictions.column_names[:5] == ['utt_id'] + columns
  assert set(tables.column(predictions, 'utt_id')) == test_ids
  pred = np.stack([tables.column(predictions, c) for c in columns], axis=1)
  np.testing.assert_allclose(pred.sum(1), 1.0, rtol=1e-5)
  row = {u: k for k, u in enumerate(tables.column(distributions, 'utt_id'))}
  ref = np.stack([tables.column(distributions, c) for c in columns], axis=1)[
    [row[u] for u in tables.column(predictions, 'utt_id')]
  ]
  report = json.loads((tmp_path / 'metrics_test.json').read_text())
  assert report['n'] == len(test_ids)
  assert set(report['metrics']) == {'low', 'medium', 'high', 'all'}
  js = [scipy.spatial.distance.jensenshannon(r, p, base=2) ** 2 for r, p in zip(ref, pred)]
  np.testing.assert_allclose(report['metrics']['all']['js_divergence'], np.mean(js), rtol=1e-5)
  # Accuracy against the reference majority, rows whose top labels tie left out (3 votes tie often).
  untied = (ref == ref.max(1, keepdims=True)).sum(1) == 1
  assert report['metrics']['all']['n_ties'] == int((~untied).sum())
  np.testing.assert_allclose(
    report['metrics']['all']['accuracy'], np.mean(ref[untied].argmax(1) == pred[untied].argmax(1))
  )
  levels = tables.column(predictions, 'ambiguity')
  assert sum(report['metrics'][level]['n'] for level in ('low', 'medium', 'high')) == int(
    sum(level is not None for level in levels)
  )
  assert '| all |' in (tmp_path / 'metrics_test.md').read_text()

  balanced = json.loads((tmp_path / 'metrics_test_balanced.json').read_text())
  balanced_ids = tables.column(pq.read_table(tmp_path / 'predictions_test_balanced.parquet'), 'utt_id')
  assert balanced['n'] == len(balanced_ids) >= len(test_ids)
