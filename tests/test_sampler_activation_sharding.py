"""The sampler traces its programs inside perax.models.activation_sharding.active(mesh): over a mesh of
8 virtual CPU devices the model's activation constraints are applied (and absent without a mesh), and
the votes and label scores equal the mesh-less ones.

The checkpoint has a shape no other test uses (an MLP width of 48), so every program here is traced
afresh in this module, whatever ran before in the session.
"""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from perax.data import features
from perax.models import activation_sharding, loading
from perax.models.tiny import make_tiny_checkpoint
from perax.raters import prompts
from perax.raters import sampler as sampler_lib

LABELS = ('neutral', 'happy', 'sad', 'angry')
BATCH, VOTES, NEW_TOKENS = 8, 3, 4
UNIQUE_MLP_WIDTH = 48  # the tiny default is 64


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  path = make_tiny_checkpoint(
    tmp_path_factory.mktemp('activation_sharding') / 'tiny', seed=2, intermediate_size=UNIQUE_MLP_WIDTH
  )
  model, _, processor = loading.load_model(path)
  rng = np.random.default_rng(1)
  clips = [0.2 * rng.normal(size=int(s * features.SAMPLE_RATE)) for s in np.linspace(0.5, 1.8, BATCH)]
  feats, lengths = features.batch_features(clips)
  text = prompts.render_chat(processor, prompts.load_prompts()[0].question(LABELS))
  encoder = prompts.PromptEncoder(processor)
  ids = [encoder.ids(text, int(n)) for n in prompts.num_audio_tokens(lengths)]
  return dict(model=model, processor=processor, features=feats, lengths=lengths, prompt_ids=ids)


def _rate(tiny, mesh, calls):
  """(votes [B, K, T], label log-probabilities [B, C]) from a sampler over ``mesh``, recording the mesh
  active at every activation constraint traced meanwhile into ``calls``."""
  tokenizer = tiny['processor'].tokenizer
  sampler = sampler_lib.Sampler(tiny['model'], tokenizer, batch_size=BATCH, mesh=mesh)
  config = sampler.config(
    votes_per_clip=VOTES,
    max_new_tokens=NEW_TOKENS,
    temperature=1.0,
    stop_strings=('\n',),
    eos_ids=sampler_lib.eos_token_ids(tokenizer),
  )
  calls.clear()
  audio = sampler.encode(tiny['features'], tiny['lengths'])
  encode_calls = list(calls)
  utt_ids = [f'u{i}' for i in range(BATCH)]
  votes = sampler.sample(audio, tiny['prompt_ids'], config, seed=4, utt_ids=utt_ids, prompt_id='p')
  sample_calls = calls[len(encode_calls) :]
  logp = sampler.score(audio, tiny['prompt_ids'], sampler_lib.LabelTokens.build(tokenizer, LABELS))
  score_calls = calls[len(encode_calls) + len(sample_calls) :]
  return votes, logp, (encode_calls, sample_calls, score_calls), config


@pytest.fixture(scope='module')
def rated(tiny):
  calls = []
  original = activation_sharding.constrain

  def spy(x, *args, **kwargs):
    calls.append((activation_sharding.current_mesh(), tuple(x.shape)))
    return original(x, *args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(activation_sharding, 'constrain', spy)
    # Mesh-less first: a meshed call must not reuse its (unconstrained) traces.
    plain = _rate(tiny, None, calls)
    mesh = Mesh(np.asarray(jax.devices()[:8]), ('data',))
    meshed = _rate(tiny, mesh, calls)
  return plain, meshed, mesh


def test_votes_and_scores_with_the_mesh_equal_the_mesh_less_ones(rated):
  (plain_votes, plain_logp, _, _), (votes, logp, _, _), _ = rated
  np.testing.assert_array_equal(votes, plain_votes)
  np.testing.assert_allclose(logp, plain_logp, rtol=1e-5, atol=1e-5)


def test_every_program_is_traced_with_the_constraints_on_the_mesh(tiny, rated):
  (_, _, plain_calls, _), (_, _, meshed_calls, _), mesh = rated
  for program, plain, meshed in zip(('encode', 'sample', 'score'), plain_calls, meshed_calls):
    assert plain and all(m is None for m, _ in plain), program  # traced, no mesh: constrain is a no-op
    assert meshed and all(m is mesh for m, _ in meshed), program
  # The decode loop's hidden states, [B * K, 1, hidden], are among them.
  decode_step = (BATCH * VOTES, 1, tiny['model'].config.text.hidden_size)
  assert any(shape == decode_step for _, shape in meshed_calls[1])


def test_the_lowered_vote_program_carries_the_constraints(tiny, rated):
  """lower_sample_votes (the planner's and benchmark's view) lowers the constrained program too: the
  decode loop's [B * K, 1, hidden] hidden state split over the 8 'data' devices."""
  _, (_, _, _, config), mesh = rated
  model = tiny['model']
  frames = tiny['features'].shape[-1]
  length = sampler_lib.prompt_bucket(max(len(ids) for ids in tiny['prompt_ids']))
  hidden_state = f'tensor<{BATCH * VOTES}x1x{model.config.text.hidden_size}xf32>'

  def constraints(mesh):
    text = sampler_lib.lower_sample_votes(
      model, config, batch_size=BATCH, prompt_length=length, feature_frames=frames, mesh=mesh
    ).as_text()
    return [line for line in text.splitlines() if 'sharding_constraint' in line and hidden_state in line]

  assert not constraints(None)
  lines = constraints(mesh)
  assert lines and all('[{"data"}, {}, {}]' in line for line in lines), lines[:3]
