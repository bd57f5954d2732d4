"""The one orientation and translation search engine (refine, classify, initial model)."""

__all__ = [
    "score",
    "search",
]
