"""Demo: a distributional head on a frozen tiny random Qwen2-Audio, on the generated demo corpus.

  python launch/train.py --config=configs/demo.py --workdir=runs/demo_train
  python launch/evaluate.py --config=configs/demo.py --workdir=runs/demo_train

The demo corpus (perax.data.corpora.demo: 200 clips, 3 simulated human votes each) and its distributions
are generated under <workdir>/data, and a tiny random checkpoint under <workdir>/tiny_checkpoint.
A random backbone's last prompt token carries little of the audio, so the demo pools the audio
positions into an MLP head. Field meanings: perax/train/config.py.
"""

from perax.train import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.total_steps = 80
  config.batch_size = 8
  config.learning_rate = 1e-2
  config.warmup_steps = 5
  config.checkpoint_every = 20
  config.model.checkpoint = config_lib.TINY_CHECKPOINT
  config.model.pooling = 'audio_mean'
  config.model.head = 'mlp'
  config.data.corpus = 'demo'
  config.data.label_set = 'demo'
  config.data.bucket_seconds = (4,)  # demo clips last 1-3 s
  return config
