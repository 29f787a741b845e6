"""Run configs and the run's data preparation: config files, fold splits with re-derived levels."""

import importlib.util
import pathlib

import numpy as np
import pyarrow as pa
import pytest

from perax import distributions as dist
from perax.core.errors import InputError
from perax.data import tables
from perax.train import data as data_lib
from perax.train import mesh as mesh_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'
REQUIRED = ('total_steps', 'batch_size', 'learning_rate', 'checkpoint_every', 'seed', 'mesh_shape')


@pytest.mark.parametrize('name', ['demo', 'iemocap', 'msp_podcast'])
def test_config_files_expose_the_required_fields(name):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for field in REQUIRED:
    assert field in config, field
  assert mesh_lib.parse_mesh_shape(config.mesh_shape, 8)
  assert config.batch_size % config.num_microbatches == 0


def test_split_by_fold_rebuilds_splits_and_levels():
  rng = np.random.default_rng(0)
  folds = [f'Session{1 + k % 5}' for k in range(60)]
  ids = [f'u{k:02d}' for k in range(60)]
  utterances = tables.utterances_table(
    {'utt_id': ids, 'fold': folds, 'split': ['train'] * 60, 'speaker': folds}
  )
  entropy = rng.uniform(size=60)
  entropy[7] = np.nan  # an utterance without human votes keeps no level
  distributions = pa.table(
    {'utt_id': ids, 'entropy_human': entropy, 'ambiguity': pa.array(['low'] * 60, pa.string())}
  )
  utts, dists = data_lib.split_by_fold(utterances, distributions, 'Session3', 'Session1')
  split = tables.column(utts, 'split')
  assert set(split[np.asarray(folds) == 'Session3']) == {'test'}
  assert set(split[np.asarray(folds) == 'Session1']) == {'dev'}
  assert (split == 'train').sum() == 36
  train = (split == 'train') & ~np.isnan(entropy)
  edges = dist.tertile_edges(entropy[train])
  levels = tables.column(dists, 'ambiguity')
  assert levels[7] is None
  for k in np.flatnonzero(~np.isnan(entropy)):
    want = 'low' if entropy[k] <= edges[0] else 'medium' if entropy[k] <= edges[1] else 'high'
    assert levels[k] == want, k
  with pytest.raises(InputError, match='Session9'):
    data_lib.split_by_fold(utterances, distributions, 'Session9')
