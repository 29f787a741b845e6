"""Synthetic raters: prompts, batched decoding from Qwen2-Audio, label scoring and bulk proxy generation."""
