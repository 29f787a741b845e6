"""The configs perax ships and reads at run time: training configs (``get_config()``) and prompts.

The repository's top-level ``configs/`` holds copies for users to edit; these are the defaults.
"""

import os

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))


def config_path(name: str) -> str:
  """The path of a shipped config file, e.g. ``config_path('demo.py')`` or ``'prompts/default.json'``."""
  return os.path.join(CONFIG_DIR, name)
