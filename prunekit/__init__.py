"""prunekit: every neural-network pruning paradigm in one measured pipeline."""

__version__ = "0.1.0"
