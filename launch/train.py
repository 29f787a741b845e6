"""Fine-tunes Qwen2-Audio with a distributional head (perax.train.loop.train).

  python launch/train.py --config=configs/demo.py --workdir=runs/demo_train
  python launch/train.py --config=configs/iemocap.py --config.data.test_fold=Session3 \
      --config.data.utterances=runs/iemocap/utterances.parquet \
      --config.data.distributions=runs/iemocap/distributions.parquet --workdir=runs/iemocap_f3

Writes <workdir>/metrics.jsonl (one line per step), <workdir>/dev_metrics.jsonl and Orbax
checkpoints under <workdir>/checkpoints; run it again on the same workdir to resume. The workdir is
locked while a run uses it. To train on the DiME-Aug set launch/augment.py wrote (rather than plan one
here), pass --config.data.augmented_train_dir=<its out_dir>.

Several processes (hosts), each with its share of the devices, run one job on the global mesh:

  python launch/train.py ... --coordinator_address=host0:1234 --num_processes=2 --process_id=0
  python launch/train.py ... --coordinator_address=host0:1234 --num_processes=2 --process_id=1
"""

import jax
from absl import app, flags
from ml_collections import config_flags

from perax.core import cli
from perax.train import loop

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Training config file (configs/*.py).', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (metrics, checkpoints).', required=True)
flags.mark_flag_as_required('config')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  result = loop.train(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0:
    print(
      f'trained steps {result.start_step + 1}..{result.final_step}; best checkpoint: step '
      f'{result.best_step}; metrics in {_WORKDIR.value}'
    )


if __name__ == '__main__':
  cli.run(main)
