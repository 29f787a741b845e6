"""Qwen2-Audio in Flax NNX and its Hugging Face checkpoint conversion.

config        Qwen2AudioConfig.from_hf_dict(config.json)
qwen2_audio   Qwen2AudioForConditionalGeneration: encode_audio, merge_audio, __call__
audio_encoder the Whisper-style encoder, valid-token arithmetic, bucket exactness
qwen2         the decoder and its attention masks
cache         KVCache contract and init_cache
layers        shared blocks (Linear, norms, RoPE, attention)
sharding      logical-axis rules and NamedShardings
convert       HF safetensors -> perax parameters (one name table), Orbax output
loading       load_model(path) from a converted or an HF directory
tiny          tiny random HF checkpoints for tests
"""
