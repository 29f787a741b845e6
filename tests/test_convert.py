"""HF safetensors -> perax conversion: the name table, dtypes, sharded and legacy layouts, tying,
clear errors for missing / unexpected / mis-shaped tensors, the Orbax round trip, the launcher."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec
from safetensors import numpy as safetensors_numpy
from safetensors import safe_open

from perax.core.errors import InputError
from perax.models import convert, loading, sharding, tiny

REPO = pathlib.Path(__file__).resolve().parents[1]


def read_tensors(directory) -> dict[str, np.ndarray]:
  tensors = {}
  for path in sorted(pathlib.Path(directory).glob('*.safetensors')):
    with safe_open(str(path), framework='numpy') as reader:
      tensors.update({name: reader.get_tensor(name) for name in reader.keys()})
  return tensors


def rewrite(source, target, tensors, config_update=None) -> pathlib.Path:
  """A copy of checkpoint ``source`` whose single weight file holds ``tensors``."""
  target = pathlib.Path(target)
  shutil.copytree(source, target)
  for stale in [*target.glob('*.safetensors'), target / convert.INDEX_FILE]:
    stale.unlink(missing_ok=True)
  safetensors_numpy.save_file(tensors, str(target / convert.SINGLE_FILE))
  if config_update:
    config = json.loads((target / 'config.json').read_text())
    config.update(config_update)
    (target / 'config.json').write_text(json.dumps(config))
  return target


def parameters(model) -> dict[str, np.ndarray]:
  """Per-layer arrays keyed by the name table's perax paths: a stacked parameter (leading 'layers'
  axis) is split into its layers."""
  out = {}
  for name, variable in convert.flat_variables(nnx.state(model)):
    value = np.asarray(variable[...])
    if tuple(variable.get_metadata().get('logical_axes') or ())[:1] == ('layers',):
      out.update({convert.layer_path(name, index): layer for index, layer in enumerate(value)})
    else:
      out[name] = value
  return out


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
  return pathlib.Path(tiny.make_tiny_checkpoint(tmp_path_factory.mktemp('hf') / 'ckpt', seed=1))


@pytest.fixture(scope='module')
def reference(hf_dir):
  """The float32 parameters read straight from the HF directory."""
  model, config, _ = loading.load_model(hf_dir, with_processor=False)
  return parameters(model), config


def test_every_tensor_maps_through_the_table_with_its_transform(hf_dir, reference):
  params, config = reference
  tensors = read_tensors(hf_dir)
  assert len(params) == len(tensors)
  for name, tensor in tensors.items():
    path, transform = convert.perax_path(name)
    assert convert.hf_name(path) == name
    value = params[path]
    if 'conv' in name and name.endswith('weight'):
      np.testing.assert_array_equal(value, tensor.transpose(2, 1, 0))
    elif transform in (convert.LINEAR, convert.LINEAR_FROM_HEADS):
      np.testing.assert_array_equal(value.reshape(tensor.shape[::-1]), tensor.T)
    else:
      np.testing.assert_array_equal(value.reshape(tensor.shape), tensor)
  heads, head_dim = config.text.num_attention_heads, config.text.head_dim
  assert params['language_model.layers.0.self_attn.q_proj.kernel'].shape == (
    config.text.hidden_size,
    heads,
    head_dim,
  )
  assert params['language_model.layers.0.self_attn.o_proj.kernel'].shape == (
    heads,
    head_dim,
    config.text.hidden_size,
  )
  assert convert.perax_path('model.audio_tower.layers.0.self_attn.k_proj.bias') is None


def test_converted_directory_round_trips_and_loads_the_processor(hf_dir, reference, tmp_path):
  out = convert.convert_checkpoint(hf_dir, tmp_path / 'converted', progress=False)
  names = {path.name for path in out.iterdir()}
  assert {
    'state',
    'config.json',
    'perax.json',
    'tokenizer.json',
    'tokenizer_config.json',
    'preprocessor_config.json',
    'generation_config.json',
    'chat_template.jinja',
  } <= names
  info = json.loads((out / 'perax.json').read_text())
  assert info['dtype'] == 'float32' and info['format_version'] == convert.FORMAT_VERSION
  model, config, processor = loading.load_model(out)
  assert config == reference[1]
  assert type(processor).__name__ == 'Qwen2AudioProcessor'
  loaded = parameters(model)
  assert loaded.keys() == reference[0].keys()
  for name, value in reference[0].items():
    np.testing.assert_array_equal(loaded[name], value, err_msg=name)
  with pytest.raises(InputError, match=r'exists and is not empty \(chat_template.jinja, .*pass --overwrite'):
    convert.convert_checkpoint(hf_dir, out, progress=False)
  assert json.loads((out / 'perax.json').read_text()) == info  # left as it was
  convert.convert_checkpoint(hf_dir, out, dtype='bfloat16', progress=False, overwrite=True)
  assert json.loads((out / 'perax.json').read_text())['dtype'] == 'bfloat16'
  assert {path.name for path in out.iterdir()} == names  # replaced, nothing left over


def test_relative_paths_convert_and_load(hf_dir, reference, tmp_path, monkeypatch):
  """Orbax wants absolute paths; a user types relative ones (the README's demo does)."""
  monkeypatch.chdir(tmp_path)
  out = convert.convert_checkpoint(hf_dir, 'runs/converted', progress=False)
  assert out.is_absolute() and (tmp_path / 'runs' / 'converted' / 'state').is_dir()
  model, _, _ = loading.load_model('runs/converted', with_processor=False)
  params, _ = reference
  for name, value in parameters(model).items():
    np.testing.assert_array_equal(value, params[name])


def test_bfloat16_conversion_casts_each_tensor(hf_dir, reference, tmp_path):
  out = convert.convert_checkpoint(hf_dir, tmp_path / 'bf16', dtype='bfloat16', progress=False)
  assert json.loads((out / 'perax.json').read_text())['dtype'] == 'bfloat16'
  model, _, _ = loading.load_model(out, dtype=jnp.bfloat16, with_processor=False)
  for name, value in parameters(model).items():
    assert value.dtype == jnp.bfloat16, name
    np.testing.assert_array_equal(value, reference[0][name].astype(ml_dtypes.bfloat16))


def test_sharded_and_legacy_layouts_give_the_same_parameters(hf_dir, reference, tmp_path):
  sharded = tiny.make_tiny_checkpoint(tmp_path / 'sharded', seed=1, shards=3)
  legacy_names = {
    'model.audio_tower.': 'audio_tower.',
    'model.multi_modal_projector.': 'multi_modal_projector.',
    'model.language_model.': 'language_model.model.',
    'lm_head.': 'language_model.lm_head.',
  }

  def legacy(name):
    for new, old in legacy_names.items():
      if name.startswith(new):
        return old + name[len(new) :]
    return name

  tensors = read_tensors(hf_dir)
  legacy_dir = rewrite(hf_dir, tmp_path / 'legacy', {legacy(n): t for n, t in tensors.items()})
  assert 'language_model.model.norm.weight' in read_tensors(legacy_dir)
  for directory in (sharded, legacy_dir):
    model, _, _ = loading.load_model(directory, with_processor=False)
    for name, value in parameters(model).items():
      np.testing.assert_array_equal(value, reference[0][name], err_msg=f'{directory}: {name}')


def test_missing_tensor_is_named(hf_dir, tmp_path):
  tensors = read_tensors(hf_dir)
  del tensors['model.language_model.layers.1.mlp.up_proj.weight']
  broken = rewrite(hf_dir, tmp_path / 'missing', tensors)
  with pytest.raises(
    InputError,
    match=r'missing 1 tensors: '
    r'model\.language_model\.layers\.1\.mlp\.up_proj\.weight \[64, 32\]',
  ) as error:
    loading.load_model(broken, with_processor=False)
  assert error.value.path == str(broken)


def test_unexpected_tensor_is_named_with_its_file(hf_dir, tmp_path):
  tensors = read_tensors(hf_dir)
  tensors['model.audio_tower.layers.0.self_attn.k_proj.bias'] = np.zeros(32, np.float32)
  broken = rewrite(hf_dir, tmp_path / 'unexpected', tensors)
  with pytest.raises(
    InputError,
    match=r"unexpected tensor 'model\.audio_tower\.layers\.0\."
    r"self_attn\.k_proj\.bias'",
  ) as error:
    loading.load_model(broken, with_processor=False)
  assert error.value.path == str(broken / convert.SINGLE_FILE)
  tensors = read_tensors(hf_dir)
  tensors['model.language_model.layers.2.input_layernorm.weight'] = np.ones(32, np.float32)
  with pytest.raises(InputError, match=r'the config has no parameter language_model\.layers\.2'):
    loading.load_model(rewrite(hf_dir, tmp_path / 'extra_layer', tensors), with_processor=False)


def test_misshaped_tensor_is_named_with_both_shapes(hf_dir, tmp_path):
  tensors = read_tensors(hf_dir)
  name = 'model.language_model.layers.0.self_attn.k_proj.weight'
  tensors[name] = np.ascontiguousarray(tensors[name].T)
  broken = rewrite(hf_dir, tmp_path / 'misshaped', tensors)
  with pytest.raises(
    InputError,
    match=r"tensor 'model\.language_model\.layers\.0\.self_attn\."
    r"k_proj\.weight' has shape \[32, 16\], expected \[16, 32\]",
  ) as error:
    convert.convert_checkpoint(broken, tmp_path / 'out', progress=False)
  assert error.value.path == str(broken / convert.SINGLE_FILE)
  assert not (tmp_path / 'out').exists()


def test_bad_directories_give_clear_errors(hf_dir, tmp_path):
  with pytest.raises(InputError, match='config.json not found'):
    loading.load_model(tmp_path, with_processor=False)
  sharded = pathlib.Path(tiny.make_tiny_checkpoint(tmp_path / 'sharded', seed=1, shards=2))
  (sharded / 'model-00002-of-00002.safetensors').unlink()
  with pytest.raises(InputError, match='shard model-00002-of-00002.safetensors .* does not exist'):
    loading.load_model(sharded, with_processor=False)
  config = json.loads((hf_dir / 'config.json').read_text())
  config['text_config']['use_sliding_window'] = True
  bad = rewrite(hf_dir, tmp_path / 'sliding', read_tensors(hf_dir), {'text_config': config['text_config']})
  with pytest.raises(InputError, match='sliding-window attention is not supported'):
    loading.load_model(bad, with_processor=False)


def test_tying_follows_the_weights(hf_dir, tmp_path):
  tied = pathlib.Path(tiny.make_tiny_checkpoint(tmp_path / 'tied', seed=1, tie_word_embeddings=True))
  model, config, _ = loading.load_model(tied, with_processor=False)
  assert config.tie_word_embeddings and model.lm_head is None
  tensors = read_tensors(tied)
  del tensors['lm_head.weight']
  model, config, _ = loading.load_model(rewrite(tied, tmp_path / 'no_head', tensors), with_processor=False)
  assert config.tie_word_embeddings and model.lm_head is None
  tensors = read_tensors(tied)
  tensors['lm_head.weight'] = tensors['lm_head.weight'] * 2  # a tie flag, but a different head
  model, config, _ = loading.load_model(rewrite(tied, tmp_path / 'own_head', tensors), with_processor=False)
  assert not config.tie_word_embeddings
  np.testing.assert_array_equal(np.asarray(model.lm_head.kernel[...]), tensors['lm_head.weight'].T)
  tensors = read_tensors(hf_dir)
  del tensors['lm_head.weight']
  with pytest.raises(InputError, match=r'missing 1 tensors: lm_head\.weight'):
    loading.load_model(rewrite(hf_dir, tmp_path / 'untied_no_head', tensors), with_processor=False)


def test_sharded_loading_places_parameters_by_logical_axes(hf_dir, reference, tmp_path):
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  converted = convert.convert_checkpoint(hf_dir, tmp_path / 'converted', progress=False)
  for directory in (hf_dir, converted):
    model, _config, _ = loading.load_model(directory, mesh=mesh, with_processor=False)
    state = nnx.state(model)
    q_kernel = state['language_model']['layers']['self_attn']['q_proj']['kernel'][...]
    assert q_kernel.sharding.spec == PartitionSpec(
      None, 'fsdp', 'tensor', None
    )  # [layers, embed, heads, dim]
    embedding = state['language_model']['embed_tokens']['embedding'][...]
    assert embedding.sharding.spec == PartitionSpec('tensor', 'fsdp')
    for name, value in parameters(model).items():
      np.testing.assert_array_equal(value, reference[0][name], err_msg=name)
  # A dimension a mesh axis does not divide stays whole on it; an axis is used once per array.
  assert sharding.partition_spec(('kv_heads', 'head_dim'), (1, 8), mesh) == PartitionSpec(None, None)
  assert sharding.partition_spec(('embed', 'embed'), (4, 4), mesh) == PartitionSpec('fsdp', None)
  assert sharding.partition_spec(('batch', 'vocab'), (6, 3), mesh) == PartitionSpec('data', None)
  ids = jnp.arange(12, dtype=jnp.int32).reshape(2, 6)
  sharded_logits = nnx.jit(lambda m, x: m(x).logits)(model, ids)
  plain, _, _ = loading.load_model(hf_dir, with_processor=False)
  plain_logits = plain(ids).logits
  np.testing.assert_allclose(np.asarray(sharded_logits), np.asarray(plain_logits), rtol=0, atol=1e-5)
  assert len(jax.devices()) == 8


def test_launcher_converts(hf_dir, tmp_path):
  out = tmp_path / 'launched'
  out.mkdir()
  (out / 'old.txt').write_text('an earlier run')
  result = subprocess.run(
    [
      sys.executable,
      str(REPO / 'launch' / 'convert_checkpoint.py'),
      f'--hf_dir={hf_dir}',
      f'--out_dir={out}',
      '--dtype=bfloat16',
      '--overwrite',
    ],
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
  )
  assert result.returncode == 0, result.stderr
  assert json.loads((out / 'perax.json').read_text())['dtype'] == 'bfloat16'
  assert not (out / 'old.txt').exists()
  assert 'convert:' in result.stderr and 'parameters/s' in result.stderr
