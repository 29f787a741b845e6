"""Shared test setup: 8 virtual CPU devices, and the real data under ../shared when present."""

import os
import pathlib

# Must happen before jax is imported anywhere: tests exercise real meshes over 8 CPU devices.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get('PERAX_SHARED_DATA', REPO.parent / 'shared' / 'data'))


@pytest.fixture(scope='session')
def shared_data() -> pathlib.Path:
  """../shared/data, or a clean skip where it is absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f'shared data not found at {SHARED_DATA}')
  return SHARED_DATA


@pytest.fixture(scope='session')
def emodb_dir(shared_data) -> pathlib.Path:
  path = shared_data / 'emodb'
  if not (path / 'wav').is_dir():
    pytest.skip(f'EmoDB not found at {path}')
  return path


@pytest.fixture(scope='session')
def crema_d_dir(shared_data) -> pathlib.Path:
  path = shared_data / 'crema-d'
  if not (path / 'tabulatedVotes.csv').is_file():
    pytest.skip(f'CREMA-D votes not found at {path}')
  return path
