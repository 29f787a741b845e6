"""perax.raters.sampler against HF transformers on tiny random Qwen2-Audio checkpoints (float32, CPU).

One tiny checkpoint serves greedy decoding (vs ``generate``), exact label scores (vs HF's
teacher-forced probabilities) and constrained sampling; a second one, edited into a "label-loving"
model that mostly answers with a label, checks that sampled vote frequencies follow the scores.
"""

import itertools

import jax
import numpy as np
import pytest
import scipy.stats
import torch
import transformers
from jax.sharding import Mesh, PartitionSpec
from safetensors import numpy as safetensors_numpy

from perax.models import loading, sharding
from perax.models.tiny import make_tiny_checkpoint
from perax.raters import decoding, prompts
from perax.raters import sampler as sampler_lib

LABELS = ('neutral', 'happy', 'sad', 'angry')
SAMPLE_RATE = 16000
BUCKET_FRAMES = 800  # the 8 s feature bucket holds every clip below
CLIP_SECONDS = (1.3, 4.6, 2.2, 3.1)


def _clips(seconds, seed=0):
  rng = np.random.default_rng(seed)
  return [(0.1 * rng.normal(size=int(s * SAMPLE_RATE))).astype(np.float32) for s in seconds]


class Tiny:
  """A tiny checkpoint loaded both ways, with HF-processed inputs for a few clips."""

  def __init__(self, path, clips, batch_size, mesh=None):
    self.processor = loading.load_processor(path)
    self.tokenizer = self.processor.tokenizer
    self.hf = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(
      path, dtype=torch.float32
    ).eval()
    self.model, _, _ = loading.load_model(path, with_processor=False)
    self.sampler = sampler_lib.Sampler(self.model, self.tokenizer, batch_size=batch_size, mesh=mesh)
    question = prompts.load_prompts()[0].question(LABELS)
    self.text = prompts.render_chat(self.processor, question)
    self.hf_inputs = [
      self.processor(text=self.text, audio=[clip], sampling_rate=SAMPLE_RATE, return_tensors='pt')
      for clip in clips
    ]
    self.label_tokens = sampler_lib.LabelTokens.build(self.tokenizer, LABELS)
    self.eos = sampler_lib.eos_token_ids(self.tokenizer)

  def encode(self, rows, sampler=None):
    """perax inputs for clips ``rows`` (padded to the batch): HF's features cut to the bucket."""
    sampler = sampler or self.sampler
    rows = sampler_lib.pad_rows(rows, sampler.batch_size)
    features = np.stack([self.hf_inputs[r]['input_features'][0, :, :BUCKET_FRAMES].numpy() for r in rows])
    lengths = np.asarray([int(self.hf_inputs[r]['feature_attention_mask'].sum()) for r in rows])
    audio = sampler.encode(features, lengths)
    prompt_ids = [self.hf_inputs[r]['input_ids'][0].numpy() for r in rows]
    return audio, prompt_ids, [f'utt{r}' for r in rows]

  def hf_label_logits(self, row):
    """HF logits over each label's tokens, teacher-forced after clip ``row``'s prompt.

    Returns:
      C arrays [T_c, V]: the logits predicting each of label c's T_c tokens.
    """
    inputs = self.hf_inputs[row]
    out = []
    for ids, length in zip(self.label_tokens.ids, self.label_tokens.lengths):
      full = torch.cat([inputs['input_ids'], torch.from_numpy(ids[None, :length]).long()], dim=1)
      with torch.no_grad():
        logits = self.hf(
          input_ids=full,
          attention_mask=torch.ones_like(full),
          input_features=inputs['input_features'],
          feature_attention_mask=inputs['feature_attention_mask'],
        ).logits[0]
      out.append(logits[-length - 1 : -1].double().numpy())
    return out


def _log_softmax(logits):
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  path = make_tiny_checkpoint(tmp_path_factory.mktemp('tiny'), seed=3)
  return Tiny(path, _clips(CLIP_SECONDS), batch_size=4)


def test_greedy_votes_equal_hf_generate(tiny):
  config = tiny.sampler.config(votes_per_clip=2, max_new_tokens=6, temperature=0.0, eos_ids=tiny.eos)
  audio, prompt_ids, utt_ids = tiny.encode([0, 1, 2, 3])
  tokens = tiny.sampler.sample(audio, prompt_ids, config, seed=0, utt_ids=utt_ids, prompt_id='p')
  for row, inputs in enumerate(tiny.hf_inputs):
    with torch.no_grad():
      generated = tiny.hf.generate(
        **inputs, max_new_tokens=6, do_sample=False, eos_token_id=list(tiny.eos), pad_token_id=tiny.eos[-1]
      )
    expected = generated[0, inputs['input_ids'].shape[1] :].tolist()
    for vote in tokens[row]:  # both greedy votes of a clip are the same
      assert vote[vote != sampler_lib.NO_TOKEN].tolist() == expected


def test_scores_equal_hf_teacher_forced_probabilities(tiny):
  audio, prompt_ids, _ = tiny.encode([0, 1, 2, 3])
  logp = tiny.sampler.score(audio, prompt_ids, tiny.label_tokens)
  for row in range(len(tiny.hf_inputs)):
    hf_logp = np.array(
      [
        _log_softmax(logits)[np.arange(length), ids[:length]].sum()
        for logits, ids, length in zip(
          tiny.hf_label_logits(row), tiny.label_tokens.ids, tiny.label_tokens.lengths
        )
      ]
    )
    np.testing.assert_allclose(logp[row], hf_logp, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(
      sampler_lib.normalise(logp[row : row + 1])[0], sampler_lib.normalise(hf_logp[None])[0], atol=1e-4
    )


def test_constrained_votes_are_labels_with_trie_probabilities(tiny):
  votes = 600
  config = tiny.sampler.config(votes_per_clip=votes, max_new_tokens=4, constrained=True, eos_ids=tiny.eos)
  audio, prompt_ids, utt_ids = tiny.encode([1])
  tokens = tiny.sampler.sample(
    audio, prompt_ids, config, seed=5, utt_ids=utt_ids, prompt_id='p', label_tokens=tiny.label_tokens
  )[0]
  texts = tiny.sampler.texts(tokens[None])[0]
  assert set(texts) <= set(LABELS)
  # The constrained distribution: at each step, the model's softmax restricted to the trie's
  # children, multiplied along each label's tokens (computed from HF's logits).
  trie_children = {}
  for ids, length in zip(tiny.label_tokens.ids, tiny.label_tokens.lengths):
    for t in range(length):
      trie_children.setdefault(tuple(ids[:t]), set()).add(int(ids[t]))
  expected = []
  for logits, ids, length in zip(tiny.hf_label_logits(1), tiny.label_tokens.ids, tiny.label_tokens.lengths):
    p = 1.0
    for t in range(length):
      allowed = sorted(trie_children[tuple(ids[:t])])
      restricted = np.exp(_log_softmax(logits[t][allowed]))
      p *= restricted[allowed.index(int(ids[t]))]
    expected.append(p)
  np.testing.assert_allclose(sum(expected), 1.0, atol=1e-9)
  counts = np.array([texts.count(label) for label in LABELS])
  assert scipy.stats.chisquare(counts, votes * np.array(expected)).pvalue > 1e-3


def _sampling(tiny):
  return tiny.sampler.config(
    votes_per_clip=3, max_new_tokens=5, temperature=0.7, top_k=20, top_p=0.9, eos_ids=tiny.eos
  )


def test_alone_equals_in_batch_and_sharded(tiny):
  config = _sampling(tiny)

  def votes(rows, seed=11, sampler=tiny.sampler):
    audio, prompt_ids, utt_ids = tiny.encode(rows, sampler)
    return sampler.sample(audio, prompt_ids, config, seed=seed, utt_ids=utt_ids, prompt_id='p')

  together = votes([0, 1, 2, 3])
  np.testing.assert_array_equal(votes([2])[0], together[2])
  np.testing.assert_array_equal(votes([3, 1])[:2], together[[3, 1]])
  assert not np.array_equal(votes([2], seed=12)[0], together[2])
  # The same votes from an 8-row batch sharded over 8 devices (keys do not depend on batch size).
  mesh = Mesh(np.asarray(jax.devices()[:8]), ('data',))
  sharded = sampler_lib.Sampler(tiny.model, tiny.tokenizer, batch_size=8, mesh=mesh)
  np.testing.assert_array_equal(votes([0, 1, 2, 3], sampler=sharded)[:4], together)


def test_sharded_weights_give_the_single_device_votes(tiny):
  """Weights split by the logical-axis rules over data x fsdp x tensor = 2 x 2 x 2 virtual devices."""
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])
  sharded = sampler_lib.Sampler(tiny.model, tiny.tokenizer, batch_size=4, mesh=mesh)
  kernel = sharded._state['language_model']['layers']['mlp']['gate_proj']['kernel'][...]
  assert kernel.sharding.spec == PartitionSpec(None, 'fsdp', 'tensor')  # [layers, embed, mlp]
  assert kernel.addressable_shards[0].data.shape == (
    kernel.shape[0],
    kernel.shape[1] // 2,
    kernel.shape[2] // 2,
  )
  config = _sampling(tiny)
  rows = [0, 1, 2, 3]
  audio, prompt_ids, utt_ids = tiny.encode(rows)
  single = tiny.sampler.sample(audio, prompt_ids, config, seed=3, utt_ids=utt_ids, prompt_id='p')
  audio, prompt_ids, utt_ids = tiny.encode(rows, sharded)
  np.testing.assert_array_equal(
    sharded.sample(audio, prompt_ids, config, seed=3, utt_ids=utt_ids, prompt_id='p'), single
  )
  np.testing.assert_allclose(
    sharded.score(audio, prompt_ids, tiny.label_tokens),
    tiny.sampler.score(*tiny.encode(rows)[:2], tiny.label_tokens),
    rtol=1e-5,
    atol=1e-5,
  )


def test_no_recompilation_after_warm_up(tiny):
  config = _sampling(tiny)
  # A batch's prompt bucket is its longest prompt's: batches of one clip warm up every bucket.
  for row in range(len(CLIP_SECONDS)):
    audio, prompt_ids, utt_ids = tiny.encode([row])
    tiny.sampler.sample(audio, prompt_ids, config, seed=0, utt_ids=utt_ids, prompt_id='p')
  warm = sampler_lib.compile_count()
  for seed, rows in enumerate([[2, 3, 0], [1], [3, 2, 1, 0], [0, 2]]):
    audio, prompt_ids, utt_ids = tiny.encode(rows)
    tiny.sampler.sample(audio, prompt_ids, config, seed=seed, utt_ids=utt_ids, prompt_id='q')
  assert sampler_lib.compile_count() == warm


def test_top_k_and_top_p_keep_the_expected_tokens():
  logits = np.log(np.array([[0.5, 0.2, 0.15, 0.1, 0.05], [0.05, 0.1, 0.15, 0.2, 0.5]]))
  config = sampler_lib.SamplingConfig(temperature=1.0, top_k=3)
  kept = np.isfinite(np.asarray(decoding.filter_logits(logits, config)))
  np.testing.assert_array_equal(kept, [[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
  # top_p = 0.8: the smallest prefix of the sorted probabilities reaching 0.8 is 0.5+0.2+0.15.
  config = sampler_lib.SamplingConfig(temperature=1.0, top_p=0.8)
  kept = np.isfinite(np.asarray(decoding.filter_logits(logits, config)))
  np.testing.assert_array_equal(kept, [[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
  config = sampler_lib.SamplingConfig(temperature=1.0, top_p=0.5)
  kept = np.isfinite(np.asarray(decoding.filter_logits(logits, config)))
  np.testing.assert_array_equal(kept, [[1, 0, 0, 0, 0], [0, 0, 0, 0, 1]])


def test_stop_strings_stop_in_the_loop_and_trim_on_the_host(tiny):
  newline_ids = sampler_lib.stop_token_ids(tiny.tokenizer, ['\n'])
  assert newline_ids and all('\n' in tiny.tokenizer.decode([i]) for i in newline_ids)
  happy, newline = tiny.tokenizer('happy\nsad', add_special_tokens=False)['input_ids'][:2]
  tokens = np.array([[[happy, newline, sampler_lib.NO_TOKEN]]])
  assert tiny.sampler.texts(tokens, ['\n']) == [['happy']]


def _label_loving(path, label_tokens, tokenizer, scale=12.0, residual=0.05):
  """Edits a tiny checkpoint into a bigram-like model that mostly answers with a label.

  Decoder layers' outputs are shrunk, so the last hidden state is dominated by the current token's
  embedding; the embeddings of the answer's tokens are orthogonal and lm_head rows favour, after
  each of them, its successors in the label trie (after the assistant turn's newline: each label's
  first token). Random lm_head parts keep the label distribution uneven.
  """
  weights = safetensors_numpy.load_file(f'{path}/model.safetensors')
  embed = weights['model.language_model.embed_tokens.weight']
  head = weights['lm_head.weight']
  hidden = embed.shape[1]
  for name in weights:
    if name.endswith(('o_proj.weight', 'down_proj.weight')):
      weights[name] = weights[name] * residual
  newline = tokenizer('\n', add_special_tokens=False)['input_ids'][0]
  followers = {}
  for ids, length in zip(label_tokens.ids, label_tokens.lengths):
    sequence = [newline] + ids[:length].tolist()
    for previous, following in itertools.pairwise(sequence):
      followers.setdefault(previous, set()).add(following)
  tokens = sorted(set(followers) | {t for f in followers.values() for t in f})
  basis, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(hidden, len(tokens))))
  direction = {t: basis[:, i] * np.sqrt(hidden) for i, t in enumerate(tokens)}
  for t in tokens:
    embed[t] = direction[t]
  for previous, following in followers.items():
    for t in following:
      head[t] += scale * direction[previous] / hidden
  safetensors_numpy.save_file(weights, f'{path}/model.safetensors', metadata={'format': 'pt'})


def test_sampled_vote_frequencies_follow_scores(tmp_path_factory):
  path = make_tiny_checkpoint(tmp_path_factory.mktemp('loving'), seed=4)
  processor = loading.load_processor(path)
  _label_loving(path, sampler_lib.LabelTokens.build(processor.tokenizer, LABELS), processor.tokenizer)
  loving = Tiny(path, _clips(CLIP_SECONDS[:2], seed=1), batch_size=2)
  votes = 2000
  config = loving.sampler.config(votes_per_clip=votes, max_new_tokens=4, temperature=1.0, eos_ids=loving.eos)
  audio, prompt_ids, utt_ids = loving.encode([0, 1])
  tokens = loving.sampler.sample(audio, prompt_ids, config, seed=0, utt_ids=utt_ids, prompt_id='p')
  logp = loving.sampler.score(audio, prompt_ids, loving.label_tokens)
  for clip in range(2):
    # A vote counts for a label when its tokens are exactly the label and <|im_end|>, the event
    # whose probability the score is.
    counts = np.array(
      [
        sum(vote[:length].tolist() == ids[:length].tolist() for vote in tokens[clip])
        for ids, length in zip(loving.label_tokens.ids, loving.label_tokens.lengths)
      ]
    )
    mass = np.exp(logp[clip]).sum()
    assert mass > 0.5 and counts.sum() > 0.5 * votes
    np.testing.assert_allclose(counts.sum() / votes, mass, atol=4 * np.sqrt(mass / votes))
    expected = counts.sum() * sampler_lib.normalise(logp[clip : clip + 1])[0]
    assert scipy.stats.chisquare(counts, expected).pvalue > 1e-3
    # The test has power: a distribution shifted by one label is rejected.
    assert scipy.stats.chisquare(counts, np.roll(expected, 1)).pvalue < 1e-6
