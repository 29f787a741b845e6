"""MSP-Podcast: LoRA fine-tuning of Qwen2-Audio-7B-Instruct, dev for the best checkpoint, Test1.

  python launch/prepare.py --corpus=msp_podcast --corpus_path=/data/MSP-Podcast \
      --out_dir=runs/msp --label_set=msp_podcast
  python launch/distributions.py --votes=runs/msp/votes.parquet \
      --utterances=runs/msp/utterances.parquet --label_set=msp_podcast --out_dir=runs/msp
  python launch/train.py --config=configs/msp_podcast.py --workdir=runs/msp_train \
      --config.model.checkpoint=/models/Qwen2-Audio-7B-Instruct \
      --config.data.utterances=runs/msp/utterances.parquet \
      --config.data.distributions=runs/msp/distributions.parquet

Field meanings: perax/train/config.py.
"""

from perax.train import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.total_steps = 20000
  config.batch_size = 64
  config.num_microbatches = 4
  config.learning_rate = 1e-4
  config.warmup_steps = 500
  config.checkpoint_every = 1000
  config.keep_last = 2
  config.keep_best = 2
  config.mesh_shape = (1, -1, 1)
  config_lib.qwen2_audio_lora(config)
  config.data.label_set = 'msp_podcast'
  config.data.test_splits = ('test1',)
  return config
