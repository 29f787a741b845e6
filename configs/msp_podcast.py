"""MSP-Podcast: LoRA fine-tuning of Qwen2-Audio-7B-Instruct, dev for the best checkpoint, Test1.

A copy to edit: it starts from the shipped defaults (perax/configs/msp_podcast.py, which documents the run)
and overrides what you change below. Pass it as ``--config=configs/msp_podcast.py`` (train.py, evaluate.py)
or ``--train_config=configs/msp_podcast.py`` (pipeline.py).
"""

from perax.configs import msp_podcast as shipped


def get_config():
  config = shipped.get_config()
  # Override fields here, for example:
  #   config.total_steps = 1000
  #   config.learning_rate = 5e-5
  return config
