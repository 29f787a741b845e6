"""Configs perax reads at run time ship inside the package; the top-level configs/ are user copies of them."""

import importlib.util
import pathlib

import pytest

from perax import configs as shipped
from perax.raters import prompts

REPO = pathlib.Path(__file__).resolve().parents[1]
USER_CONFIGS = REPO / 'configs'


def _load(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(f'user_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('name', ['demo', 'iemocap', 'msp_podcast'])
def test_user_configs_start_from_the_shipped_ones(name):
  user = _load(USER_CONFIGS / f'{name}.py').get_config()
  package = _load(pathlib.Path(shipped.config_path(f'{name}.py'))).get_config()
  assert user.to_dict() == package.to_dict()


def test_default_prompts_ship_in_the_package_and_match_the_user_copy():
  path = pathlib.Path(prompts.DEFAULT_CONFIG)
  assert path.is_relative_to(pathlib.Path(shipped.__file__).parent)
  assert path.read_bytes() == (USER_CONFIGS / 'prompts' / 'default.json').read_bytes()
  assert prompts.load_prompts()  # loads without the repository around
