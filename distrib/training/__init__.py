"""The training loop (replicated and sharded), its learning-rate schedule and batch ramp, optimizers,
early stopping, mixed precision, the captured CUDA-graph step, numerical health checks and ensemble blending.
"""
