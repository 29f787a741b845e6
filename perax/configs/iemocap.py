"""IEMOCAP, 4 classes, leave-one-session-out: LoRA fine-tuning of Qwen2-Audio-7B-Instruct.

  python launch/prepare.py --corpus=iemocap --corpus_path=/data/IEMOCAP_full_release \
      --out_dir=runs/iemocap --label_set=iemocap4
  python launch/distributions.py --votes=runs/iemocap/votes.parquet \
      --utterances=runs/iemocap/utterances.parquet --label_set=iemocap4 --out_dir=runs/iemocap
  python launch/train.py --config=configs/iemocap.py --workdir=runs/iemocap_fold5 \
      --config.model.checkpoint=/models/Qwen2-Audio-7B-Instruct \
      --config.data.utterances=runs/iemocap/utterances.parquet \
      --config.data.distributions=runs/iemocap/distributions.parquet \
      --config.data.test_fold=Session5

The fold is ``data.test_fold`` (Session1 ... Session5): that session is the test split, the other
four train; the ambiguity levels are recomputed from the new training split. No dev split by default
(``data.dev_fold`` names one), so the kept "best" checkpoint is the last. IEMOCAP may be in
Qwen2-Audio's training data: say so next to any result. Field meanings: perax/train/config.py.
"""

from perax.train import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.total_steps = 3000
  config.batch_size = 32
  config.num_microbatches = 2
  config.learning_rate = 1e-4
  config.warmup_steps = 100
  config.checkpoint_every = 500
  config.mesh_shape = (1, -1, 1)
  config_lib.qwen2_audio_lora(config)
  config.data.label_set = 'iemocap4'
  config.data.test_fold = 'Session5'
  config.data.dev_split = ''
  return config
