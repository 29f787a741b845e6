"""IEMOCAP, 4 classes, leave-one-session-out: LoRA fine-tuning of Qwen2-Audio-7B-Instruct.

A copy to edit: it starts from the shipped defaults (perax/configs/iemocap.py, which documents the run)
and overrides what you change below. Pass it as ``--config=configs/iemocap.py`` (train.py, evaluate.py)
or ``--train_config=configs/iemocap.py`` (pipeline.py).
"""

from perax.configs import iemocap as shipped


def get_config():
  config = shipped.get_config()
  # Override fields here, for example:
  #   config.total_steps = 1000
  #   config.learning_rate = 5e-5
  return config
