"""Fine-tuning Qwen2-Audio with a distributional head: losses, LoRA, sharding, checkpoints, loop,
evaluation."""
