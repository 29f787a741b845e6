"""Guards of a training run: the workdir lock (a real second train.py), a diverging loss stops with
the step named, and training / evaluation read the DiME-Aug sets written by launch/augment.py."""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import transformers

from perax.augment import augmented_set
from perax.core.errors import InputError
from perax.core.locks import RunLock
from perax.data import tables
from perax.models import sharding, tiny
from perax.train import data as data_lib
from perax.train import loop

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / 'configs' / 'demo.py'


@pytest.fixture(scope='module')
def config(tmp_path_factory):
  """The demo config over demo tables and a tiny checkpoint made once; no dev split, 4 steps."""
  inputs = tmp_path_factory.mktemp('inputs')
  spec = importlib.util.spec_from_file_location('demo_config', DEMO_CONFIG)
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  base = demo.get_config()
  data_lib.load_run_data(base.data, str(inputs), seed=0)
  base.data.utterances = str(inputs / data_lib.DATA_DIRNAME / data_lib.UTTERANCES_FILE)
  base.data.distributions = str(inputs / data_lib.DATA_DIRNAME / data_lib.DISTRIBUTIONS_FILE)
  base.model.checkpoint = tiny.make_tiny_checkpoint(inputs / 'tiny', seed=0)
  base.total_steps = 4
  base.checkpoint_every = 100
  base.warmup_steps = 1
  base.data.dev_split = ''
  return base


def test_a_second_train_py_on_a_locked_workdir_refuses_naming_the_holder(tmp_path):
  workdir = tmp_path / 'run_8,1,1'
  env = {**os.environ, 'PYTHONPATH': str(REPO)}
  with RunLock(workdir):
    result = subprocess.run(
      [sys.executable, str(REPO / 'launch' / 'train.py'), f'--config={DEMO_CONFIG}', f'--workdir={workdir}'],
      capture_output=True,
      text=True,
      env=env,
      check=False,
      timeout=300,
    )
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and f'in use by another perax process (pid {os.getpid()})' in errors[0], (
    result.stderr
  )
  assert str(workdir) in errors[0]


def test_a_diverging_loss_stops_training_naming_the_step(config, tmp_path):
  diverging = config.copy_and_resolve_references()
  diverging.learning_rate = 1e30
  with pytest.raises(InputError, match=r'the loss of step (\d+) is (nan|inf|-inf)') as error:
    loop.train(diverging, str(tmp_path))
  step = int(error.value.reason.split('the loss of step ')[1].split()[0])
  with open(tmp_path / loop.METRICS_FILE, encoding='utf-8') as f:
    lines = [json.loads(line) for line in f]
  # Every logged step is finite, and the run stopped at the first step that was not.
  assert [r['step'] for r in lines] == list(range(1, step))
  assert all(math.isfinite(r['loss']) for r in lines)
  # The lock was released: the same workdir can be locked again.
  with RunLock(tmp_path):
    pass


@pytest.fixture(scope='module')
def written(config, tmp_path_factory):
  """The demo's training split and balanced test set written by augmented_set.augment."""
  out = tmp_path_factory.mktemp('augment')
  utterances = tables.read_utterances(config.data.utterances)
  distributions = tables.read_table(config.data.distributions)
  train = augmented_set.augment(utterances, distributions, str(out / 'train'), split='train', seed=3)
  test = augmented_set.augment(
    utterances, distributions, str(out / 'eval'), split='test', seed=3, eval_set=True
  )
  return train, test


def test_training_and_evaluation_read_the_written_sets(config, written, tmp_path):
  train, test = written
  run_config = config.copy_and_resolve_references()
  run_config.data.augmented_train_dir = os.path.dirname(train['plan'])
  run_config.data.eval_set_dirs = (os.path.dirname(test['plan']),)
  run = data_lib.load_run_data(run_config.data, str(tmp_path), seed=0)
  processor = transformers.AutoProcessor.from_pretrained(run_config.model.checkpoint)
  mesh = sharding.make_mesh(*run_config.mesh_shape)
  pipeline = data_lib.train_pipeline(run, processor, run_config, mesh)
  plan = tables.read_table(train['plan'])
  # Exactly the written examples: no second plan is made.
  assert sorted(pipeline.utt_ids) == sorted(tables.column(plan, 'utt_id'))
  assert (tables.column(plan, 'origin') == 'augmented').any()
  balanced = data_lib.eval_data(
    run, processor, run_config, mesh, 'test', balanced=True, written_dir=run_config.data.eval_set_dirs[0]
  )
  written_test = tables.read_table(test['distributions'])
  level_of = dict(zip(tables.column(written_test, 'utt_id'), tables.column(written_test, 'ambiguity')))
  assert balanced.name == 'test_balanced'
  assert sorted(balanced.pipeline.utt_ids) == sorted(level_of)
  assert [level_of[u] for u in balanced.pipeline.utt_ids] == list(balanced.levels)
  # A written set of another split is refused, naming the config field.
  run_config.data.augmented_train_dir = os.path.dirname(test['plan'])
  with pytest.raises(InputError, match='config.data.augmented_train_dir'):
    data_lib.train_pipeline(run, processor, run_config, mesh)
  assert np.all(np.isin(tables.column(plan, 'split'), ['train']))


def test_evaluating_a_run_without_checkpoints_is_a_one_line_input_error(config, tmp_path):
  from perax.train import evaluate

  with pytest.raises(InputError, match=r"no checkpoint 'best' \(saved steps: \[\]\); train first"):
    evaluate.evaluate_checkpoint(config, str(tmp_path))
