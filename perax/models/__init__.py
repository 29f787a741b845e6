"""Qwen2-Audio in Flax NNX and its Hugging Face checkpoint conversion.

config        Qwen2AudioConfig.from_hf_dict(config.json)
qwen2_audio   Qwen2AudioForConditionalGeneration: encode_audio, merge_audio, __call__ -> Qwen2AudioOutput
audio_encoder the Whisper-style encoder, valid-token arithmetic, bucket exactness
qwen2         the decoder and its attention masks
cache         KVCache contract (stacked over layers), init_cache, cache_shardings
layers        shared blocks (Linear, norms, RoPE, attention)
layer_stack   stacked layers run as a scan or unrolled, with a remat policy
sharding      logical-axis rules and NamedShardings
names         the one HF <-> perax parameter name table and its transforms
convert       HF safetensors -> perax parameters, checked from headers, streamed parameter by parameter
store         the converted directory: locked streaming writes (Orbax partial saves), checked restores
tokenizer_files  processor files a checkpoint needs; the <|AUDIO|> id check against config.json
loading       load_model(path, mesh= | shardings=) from a converted or an HF directory
tiny          tiny random HF checkpoints for tests
"""
