"""Training engine: the loop (Adamax, warm-up schedule, clipping, bf16 autocast, DDP via torchrun),
checkpoints (safetensors) with exact resume, and run directories that rebuild their model."""
