"""torch.distributed helpers: ranks, particle shards and all-reduced accumulators."""

__all__ = [
    "distributed",
]
