"""Synthetic raters: prompts, batched decoding from Qwen2-Audio, label scoring and bulk proxy generation.

prompts        rater prompts (configs), chat rendering, PromptEncoder (the one audio-token splicing home)
decoding       fixed-shape decoding: prompt buckets, prefill, the shared-prefix vote loop (DecodeState)
label_scoring  a label set's token sequences (trie) and exact label scores
sampler        Sampler, the host-side interface (encode, sample, score, texts), compile_count
shard_worker   one shard of a proxy job: clips -> batches -> rows (windows aggregated)
proxies        ProxyJob and generate: resumable bulk votes / scores, skipped items, clip policy
"""
