"""Demo: a distributional head on a frozen tiny random Qwen2-Audio, on the generated demo corpus.

A copy to edit: it starts from the shipped defaults (perax/configs/demo.py, which documents the run)
and overrides what you change below. Pass it as ``--config=configs/demo.py`` (train.py, evaluate.py)
or ``--train_config=configs/demo.py`` (pipeline.py).
"""

from perax.configs import demo as shipped


def get_config():
  config = shipped.get_config()
  # Override fields here, for example:
  #   config.total_steps = 1000
  #   config.learning_rate = 5e-5
  return config
