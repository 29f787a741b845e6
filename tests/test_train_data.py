"""Run configs and the run's data: config files and their checks, fold splits, the one level
definition, targets without human votes, and the written DiME-Aug sets."""

import importlib.util
import json
import os
import pathlib

import jax
import numpy as np
import pyarrow as pa
import pytest

from perax import distributions as dist
from perax.core.errors import InputError
from perax.data import tables
from perax.train import config as config_lib
from perax.train import data as data_lib
from perax.train import setup

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'
REQUIRED = ('total_steps', 'batch_size', 'learning_rate', 'checkpoint_every', 'seed', 'mesh_shape')


def _load_config(name):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize('name', ['demo', 'iemocap', 'msp_podcast'])
def test_config_files_pass_the_checks(name):
  config = _load_config(name)
  for field in REQUIRED:
    assert field in config, field
  mesh = setup.check_config(config)
  assert mesh.size == jax.device_count()
  assert isinstance(config.mesh_shape, tuple) and isinstance(config.model.lora_targets, tuple)


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('mesh_shape', '1,-1,1', 'config.mesh_shape: needs a tuple of 3 ints'),
    ('mesh_shape', (3, -1, 1), 'config.mesh_shape: mesh'),
    ('model.lora_targets', 'q_proj,v_proj', 'config.model.lora_targets: needs a tuple'),
    ('model.lora_targets', ('q_proj', '(v'), 'config.model.lora_targets:'),
    ('data.test_splits', 'test', 'config.data.test_splits:'),
    ('data.eval_set_dirs', ('a', 'b'), 'config.data.eval_set_dirs: needs one directory per test split'),
    ('loss', 'mse', 'config.loss:'),
    ('batch_size', 12, 'config.batch_size: 12 is not a multiple of the 8 batch shards'),
    ('num_microbatches', 3, 'config.num_microbatches:'),
    ('model.scope', 'all', 'config.model.scope:'),
    ('data.bucket_seconds', (4, 2), 'config.data.bucket_seconds:'),
  ],
)
def test_check_config_names_the_bad_field(field, value, message):
  config = _load_config('demo')
  config.unlock() if hasattr(config, 'unlock') else None
  block, _, name = field.rpartition('.')
  target = config[block] if block else config
  with target.ignore_type():
    target[name] = value
  with pytest.raises(InputError) as error:
    setup.check_config(config)
  assert str(error.value).startswith(message), str(error.value)


def _fold_tables():
  rng = np.random.default_rng(0)
  folds = [f'Session{1 + k % 5}' for k in range(60)]
  ids = [f'u{k:02d}' for k in range(60)]
  utterances = tables.utterances_table(
    {'utt_id': ids, 'fold': folds, 'split': ['train'] * 60, 'speaker': folds, 'audio_path': ['x.wav'] * 60}
  )
  entropy = rng.uniform(size=60)
  entropy[7] = np.nan  # an utterance without human votes keeps no level
  p = rng.dirichlet(np.ones(4), 60)
  distributions = pa.table(
    {
      'utt_id': ids,
      'n_human': np.where(np.isnan(entropy), 0.0, 3.0),
      **{f'p_{label}': p[:, c] for c, label in enumerate(('neutral', 'happy', 'sad', 'angry'))},
      'entropy_human': entropy,
      'ambiguity': pa.array(['low'] * 60, pa.string()),
    }
  )
  return folds, entropy, utterances, distributions


def test_split_by_fold_rebuilds_splits_with_the_configured_names():
  folds, _, utterances, _ = _fold_tables()
  utts = data_lib.split_by_fold(utterances, 'Session3', 'Session1', test_split='Test1')
  split = tables.column(utts, 'split')
  assert set(split[np.asarray(folds) == 'Session3']) == {'Test1'}
  assert set(split[np.asarray(folds) == 'Session1']) == {'dev'}
  assert (split == 'train').sum() == 36
  with pytest.raises(InputError, match='Session9'):
    data_lib.split_by_fold(utterances, 'Session9')


def _write_inputs(directory, utterances, distributions, info=None):
  directory.mkdir(parents=True, exist_ok=True)
  tables.write_table(utterances, directory / 'utterances.parquet')
  tables.write_table(distributions, directory / 'distributions.parquet')
  if info is not None:
    (directory / 'distributions.json').write_text(json.dumps(info))
  data = config_lib.default_config().data
  data.utterances = str(directory / 'utterances.parquet')
  data.distributions = str(directory / 'distributions.parquet')
  data.label_set = 'demo'
  return data


def _expected_levels(entropy, edges):
  return [
    None if np.isnan(e) else 'low' if e <= edges[0] else 'medium' if e <= edges[1] else 'high'
    for e in entropy
  ]


def test_fold_levels_are_refit_on_the_folds_training_split_and_human_rows_kept(tmp_path):
  folds, entropy, utterances, distributions = _fold_tables()
  data = _write_inputs(
    tmp_path, utterances, distributions, {'levels': {'edges': [0.1, 0.2], 'source': 'tertiles'}}
  )
  data.test_fold, data.dev_fold = 'Session3', 'Session1'
  run = data_lib.load_run_data(data, str(tmp_path), seed=0)
  train = np.isin(folds, ['Session2', 'Session4', 'Session5']) & ~np.isnan(entropy)
  assert run.levels.edges == dist.tertile_edges(entropy[train])
  assert run.without_human == 1  # u07 has no human vote
  assert 'u07' not in set(tables.column(run.distributions, 'utt_id'))
  kept = np.arange(60) != 7
  assert list(tables.column(run.distributions, 'ambiguity')) == _expected_levels(
    entropy[kept], run.levels.edges
  )


def test_levels_come_from_the_distributions_json_or_an_explicit_file(tmp_path, capsys):
  _, entropy, utterances, distributions = _fold_tables()
  data = _write_inputs(
    tmp_path / 'a', utterances, distributions, {'levels': {'edges': [0.25, 0.5], 'source': 'fixed'}}
  )
  run = data_lib.load_run_data(data, str(tmp_path), seed=0)
  assert run.levels.edges == (0.25, 0.5)
  kept = np.arange(60) != 7
  assert list(tables.column(run.distributions, 'ambiguity')) == _expected_levels(entropy[kept], (0.25, 0.5))
  assert '1 of 60 utterances have no human vote' in capsys.readouterr().err
  explicit = tmp_path / 'levels.json'
  explicit.write_text(json.dumps({'edges': [0.1, 0.9], 'source': 'fixed'}))
  data.level_definition = str(explicit)
  data.proxy_only_targets = True
  run = data_lib.load_run_data(data, str(tmp_path), seed=0)
  assert run.levels.edges == (0.1, 0.9) and run.without_human == 0
  assert tables.column(run.distributions, 'ambiguity')[7] is None  # kept, but with no level
  data.level_definition = str(tmp_path / 'a' / 'utterances.parquet')
  with pytest.raises(InputError):
    data_lib.load_run_data(data, str(tmp_path), seed=0)


def test_old_distributions_json_without_levels_falls_back_to_train_tertiles(tmp_path):
  _, entropy, utterances, distributions = _fold_tables()
  data = _write_inputs(tmp_path, utterances, distributions, {'edges': [0.3, 0.6]})
  run = data_lib.load_run_data(data, str(tmp_path), seed=0)
  assert run.levels.edges == dist.tertile_edges(entropy[~np.isnan(entropy)])
  assert run.levels.source == 'tertiles'


def test_a_comma_in_the_workdir_path_works(tmp_path):
  """The demo's votes path lies under the workdir; a comma in it must not split it (issue 14)."""
  workdir = tmp_path / 'run_8,1,1'
  data = config_lib.default_config().data
  data.corpus, data.label_set = 'demo', 'demo'
  run = data_lib.load_run_data(data, str(workdir), seed=0)
  assert run.distributions.num_rows > 0
  assert os.path.exists(workdir / data_lib.DATA_DIRNAME / data_lib.DISTRIBUTIONS_FILE)
