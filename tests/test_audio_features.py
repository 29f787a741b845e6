"""Audio loading and Whisper log-mel features against transformers, scipy and hand computations."""

import numpy as np
import pytest
import scipy.signal
import soundfile
import torch
from transformers import WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

from perax.core.errors import InputError
from perax.data import audio, features

SR = 16000
ATOL = 1e-4  # against Hugging Face's float64 numpy path, the exact computation
# Against its float32 torch path (what the processor runs where torch is installed), which itself
# strays up to about 1e-4 from the float64 path on clean signals such as chirps.
TORCH_ATOL = 2e-4


@pytest.fixture(scope='module')
def extractor():
  return WhisperFeatureExtractor(feature_size=128)


def hf_features(extractor, clip):
  """Hugging Face's features [128, 3000] (float64 numpy path) and valid frames.

  Also checks that the torch path, which ``extractor(...)`` runs, agrees with the result.
  """
  out = extractor(clip, sampling_rate=SR, return_attention_mask=True, return_tensors='np')
  padded = np.zeros((1, features.MAX_SAMPLES), np.float32)
  padded[0, : min(len(clip), features.MAX_SAMPLES)] = clip[: features.MAX_SAMPLES]
  exact = extractor._np_extract_fbank_features(padded, 'cpu')[0]
  np.testing.assert_allclose(out['input_features'][0], exact, rtol=0, atol=TORCH_ATOL)
  return exact, int(out['attention_mask'][0].sum())


def hf_torch_features(extractor, clip):
  """Hugging Face's features [128, 3000] by its float32 torch path, as the processor runs."""
  return extractor(clip, sampling_rate=SR, return_tensors='np')['input_features'][0]


def hf_unclamped_log_mel(clip):
  """Hugging Face's numpy log10 mel of the 30 s-padded clip, before the dynamic-range clamp."""
  padded = np.zeros(features.MAX_SAMPLES, np.float64)
  padded[: len(clip)] = clip
  filters = mel_filter_bank(
    num_frequency_bins=201,
    num_mel_filters=128,
    min_frequency=0.0,
    max_frequency=8000.0,
    sampling_rate=SR,
    norm='slaney',
    mel_scale='slaney',
  )
  return spectrogram(
    padded,
    window_function(400, 'hann'),
    frame_length=400,
    hop_length=160,
    power=2.0,
    mel_filters=filters,
    log_mel='log10',
  )[:, :-1]


def noise(num_samples, seed=0, scale=0.1):
  return (np.random.default_rng(seed).normal(size=num_samples) * scale).astype(np.float32)


def tone(num_samples, hz, sr=SR, amplitude=0.5):
  return (amplitude * np.sin(2 * np.pi * hz * np.arange(num_samples) / sr)).astype(np.float32)


def test_mel_filters_and_window_match_transformers_and_torch(extractor):
  reference = mel_filter_bank(
    num_frequency_bins=201,
    num_mel_filters=128,
    min_frequency=0.0,
    max_frequency=8000.0,
    sampling_rate=SR,
    norm='slaney',
    mel_scale='slaney',
  )
  np.testing.assert_allclose(features.mel_filters(), reference, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(features.mel_filters(), extractor.mel_filters, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(features.hann_window(), window_function(400, 'hann'), atol=1e-7)
  np.testing.assert_allclose(features.hann_window(), torch.hann_window(400).numpy(), atol=1e-6)
  assert features.hz_to_slaney_mel(1000.0) == pytest.approx(15.0)
  np.testing.assert_allclose(
    features.slaney_mel_to_hz(features.hz_to_slaney_mel(np.array([0.0, 440.0, 1000.0, 3000.0, 8000.0]))),
    [0.0, 440.0, 1000.0, 3000.0, 8000.0],
  )


CLIPS = {
  'noise_2s': lambda: noise(2 * SR),
  'noise_odd': lambda: noise(12345, seed=1),
  'tone_440': lambda: tone(3 * SR, 440.0),
  'two_tones': lambda: tone(SR + 77, 300.0) + tone(SR + 77, 5000.0, amplitude=0.01),
  'chirp': lambda: (0.3 * np.sin(2 * np.pi * np.cumsum(np.linspace(50, 7900, 5 * SR)) / SR)).astype(
    np.float32
  ),
  'tiny_1000': lambda: noise(1000, seed=2),
  'silence_padded_7s': lambda: np.concatenate(
    [np.zeros(SR, np.float32), noise(5 * SR, seed=3), np.zeros(SR + 5, np.float32)]
  ),
  'quiet_tail_16s': lambda: np.concatenate([tone(8 * SR, 180.0), noise(8 * SR, 4, 1e-4)]),
  'noise_30s': lambda: noise(30 * SR, seed=5),
  'noise_31s': lambda: noise(31 * SR, seed=6),
}


@pytest.mark.parametrize('name', sorted(CLIPS))
def test_batch_features_equal_transformers_on_valid_frames(extractor, name):
  clip = CLIPS[name]()
  reference, reference_frames = hf_features(extractor, clip)
  feats, lengths = features.batch_features([clip])
  bucket = features.bucket_for(len(clip))
  assert feats.shape == (1, 128, 100 * bucket) and feats.dtype == np.float32
  assert lengths.tolist() == [reference_frames] and lengths.dtype == np.int32
  np.testing.assert_allclose(feats[0], reference[:, : feats.shape[2]], rtol=0, atol=ATOL)
  np.testing.assert_allclose(features.log_mel_spectrogram(clip), reference, rtol=0, atol=ATOL)


@pytest.mark.parametrize('name', ['noise_odd', 'chirp', 'noise_30s'])
def test_features_agree_with_the_torch_path_the_processor_runs(extractor, name):
  clip = CLIPS[name]()
  np.testing.assert_allclose(
    features.log_mel_spectrogram(clip), hf_torch_features(extractor, clip), rtol=0, atol=TORCH_ATOL
  )


def test_bucket_padding_keeps_valid_frames_and_the_peak():
  """Fact 2: zero padding only adds frames at the floor, so every bucket gives the same frames."""
  clip = noise(SR + 4321, seed=7)
  frames = features.valid_frames(len(clip))
  reference = features.log_mel_spectrogram(clip)[:, :frames]
  for seconds in features.BUCKET_SECONDS:
    feats, lengths = features.batch_features([clip], bucket_seconds=seconds)
    assert lengths.tolist() == [frames]
    np.testing.assert_allclose(feats[0, :, :frames], reference, rtol=0, atol=1e-5)
  log_mel = hf_unclamped_log_mel(clip)
  first_pure_padding = -(-(len(clip) + 200) // 160)
  assert np.all(log_mel[:, first_pure_padding:] == np.log10(features.MEL_FLOOR))
  assert log_mel.min() == np.log10(features.MEL_FLOOR)


def test_guard_frames_carry_the_peak_of_a_clip_ending_at_its_bucket(extractor):
  """Fact 3: a click 30 samples before the bucket's end peaks in the frame after the bucket."""
  num_samples = 2 * SR
  clip = noise(num_samples, seed=8, scale=1e-4)
  clip[num_samples - 30] = 1.0
  bucket_frames = num_samples // 160
  log_mel = hf_unclamped_log_mel(clip)
  peak_frame = int(np.unravel_index(log_mel.argmax(), log_mel.shape)[1])
  assert bucket_frames <= peak_frame < bucket_frames + features.GUARD_FRAMES
  valid = log_mel[:, :bucket_frames]
  naive = (np.maximum(valid, valid.max() - 8.0) + 4.0) / 4.0
  reference, _ = hf_features(extractor, clip)
  assert np.abs(naive - reference[:, :bucket_frames]).max() > 0.1  # the subtlety is real
  feats, _ = features.batch_features([clip], bucket_seconds=2)
  assert feats.shape[2] == bucket_frames
  np.testing.assert_allclose(feats[0], reference[:, :bucket_frames], rtol=0, atol=ATOL)


def test_batch_features_pads_a_mixed_batch_to_one_bucket(extractor):
  clips = [noise(SR // 2, seed=10), tone(3 * SR + 11, 220.0), noise(100, seed=11)]
  feats, lengths = features.batch_features(clips)
  assert feats.shape == (3, 128, 400)
  for row, clip in enumerate(clips):
    reference, reference_frames = hf_features(extractor, clip)
    assert lengths[row] == reference_frames
    np.testing.assert_allclose(feats[row], reference[:, :400], rtol=0, atol=ATOL)


def test_long_clips_are_truncated_with_a_counted_warning(capsys):
  clips = [noise(3 * SR, seed=12), noise(5 * SR, seed=13), noise(SR, seed=14)]
  feats, lengths = features.batch_features(clips, bucket_seconds=2)
  assert feats.shape == (3, 128, 200)
  assert lengths.tolist() == [200, 200, 100]
  assert 'warning: truncated 2 of 3 clips' in capsys.readouterr().err
  np.testing.assert_allclose(feats[1], features.log_mel_spectrogram(clips[1][: 2 * SR], 200), atol=1e-6)


def test_bucket_for_and_valid_frames():
  assert [features.bucket_for(n) for n in (1, 2 * SR, 2 * SR + 1, 16 * SR + 1, 31 * SR)] == [2, 4, 4, 30, 30]
  assert [features.bucket_for(n, (3, 6)) for n in (1, 3 * SR - 320, 3 * SR, 9 * SR)] == [3, 3, 6, 6]
  assert features.valid_frames(np.array([1, 160, 161, 480000, 10**7])).tolist() == [1, 1, 2, 3000, 3000]


def test_load_audio_mixes_down_and_resamples_a_tone(tmp_path):
  rate, seconds, hz = 22050, 1.5, 440.0
  left = tone(int(rate * seconds), hz, sr=rate, amplitude=0.6)
  soundfile.write(tmp_path / 'stereo.wav', np.stack([left, 0.5 * left], axis=1), rate, subtype='FLOAT')
  loaded = audio.load_audio(tmp_path / 'stereo.wav')
  assert loaded.dtype == np.float32 and loaded.ndim == 1
  assert len(loaded) == round(len(left) * SR / rate)
  expected = tone(len(loaded), hz, amplitude=0.45)
  np.testing.assert_allclose(loaded[200:-200], expected[200:-200], atol=2e-3)


def test_load_audio_reads_a_segment_exactly(tmp_path):
  clip = noise(3 * SR, seed=15)
  audio.write_wav(tmp_path / 'clip.wav', clip, subtype='FLOAT')
  whole = audio.load_audio(tmp_path / 'clip.wav')
  np.testing.assert_array_equal(whole, clip)
  segment = audio.load_audio(tmp_path / 'clip.wav', start_s=0.5, end_s=1.25)
  np.testing.assert_array_equal(segment, clip[8000:20000])
  np.testing.assert_array_equal(audio.load_audio(tmp_path / 'clip.wav', start_s=2.0, end_s=9.0), clip[32000:])


def test_write_wav_quantises_to_pcm16_and_clips(tmp_path):
  clip = np.array([0.0, 0.25, -0.5, 1.5, -2.0], np.float32)
  audio.write_wav(tmp_path / 'sub' / 'out.wav', clip)
  read, rate = soundfile.read(tmp_path / 'sub' / 'out.wav', dtype='float32')
  assert rate == SR
  np.testing.assert_allclose(read, np.clip(clip, -1, 1), atol=1 / 32768)
  assert [p.name for p in (tmp_path / 'sub').iterdir()] == ['out.wav']


def test_load_audio_errors_name_the_file(tmp_path):
  with pytest.raises(InputError, match='missing.wav'):
    audio.load_audio(tmp_path / 'missing.wav')
  (tmp_path / 'garbage.wav').write_bytes(b'not a wav file at all')
  with pytest.raises(InputError, match='garbage.wav') as error:
    audio.load_audio(tmp_path / 'garbage.wav')
  assert error.value.path.endswith('garbage.wav')
  audio.write_wav(tmp_path / 'short.wav', noise(SR, seed=16))
  with pytest.raises(InputError, match='short.wav.*outside'):
    audio.load_audio(tmp_path / 'short.wav', start_s=2.0)
  with pytest.raises(InputError, match='empty'):
    audio.load_audio(tmp_path / 'short.wav', start_s=0.5, end_s=0.5)


@pytest.fixture(scope='module')
def emodb_clips(emodb_dir):
  paths = sorted((emodb_dir / 'wav').glob('*.wav'))[::67]
  return [audio.load_audio(path) for path in paths], paths


def test_emodb_wavs_load_at_16k(emodb_clips):
  clips, paths = emodb_clips
  raw, rate = soundfile.read(str(paths[0]), dtype='float64')
  assert rate == 22050
  reference = scipy.signal.resample_poly(raw, 320, 441)  # 22050 * 320 / 441 = 16000
  assert len(clips[0]) == len(reference)
  residual = np.sqrt(np.mean((clips[0] - reference) ** 2) / np.mean(reference**2))
  assert residual < 1e-2  # the two resamplers' filters differ only near Nyquist


def test_emodb_features_equal_transformers(extractor, emodb_clips):
  clips, _ = emodb_clips
  feats, lengths = features.batch_features(clips)
  for row, clip in enumerate(clips):
    reference, reference_frames = hf_features(extractor, clip)
    assert lengths[row] == reference_frames
    np.testing.assert_allclose(feats[row], reference[:, : feats.shape[2]], rtol=0, atol=ATOL)
