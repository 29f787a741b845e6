"""Converts a Hugging Face Qwen2-Audio checkpoint into a perax (Orbax) checkpoint directory.

  python launch/convert_checkpoint.py --hf_dir=/ckpt/Qwen2-Audio-7B-Instruct \
      --out_dir=/ckpt/qwen2-audio-perax --dtype=bfloat16

See perax.models.convert for what is read, checked and written. Conversion streams tensor by tensor
(at most about 1.5x the output size of memory); an existing non-empty --out_dir is refused unless
--overwrite is given.
"""

from absl import app, flags

from perax.core import cli
from perax.models import convert

_HF_DIR = flags.DEFINE_string(
  'hf_dir',
  None,
  'HF checkpoint directory (config.json, safetensors, tokenizer and processor files).',
  required=True,
)
_OUT_DIR = flags.DEFINE_string(
  'out_dir',
  None,
  'Directory to write the converted checkpoint to: missing or empty (locked while written).',
  required=True,
)
_OVERWRITE = flags.DEFINE_bool(
  'overwrite', False, 'Replace a non-empty --out_dir (only once the new conversion is complete).'
)
_DTYPE = flags.DEFINE_enum(
  'dtype', 'float32', ['float32', 'bfloat16'], 'Stored parameter dtype; each tensor is cast as it is read.'
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  out = convert.convert_checkpoint(
    _HF_DIR.value, _OUT_DIR.value, dtype=_DTYPE.value, overwrite=_OVERWRITE.value
  )
  print(f'wrote {out}')


if __name__ == '__main__':
  cli.run(main)
