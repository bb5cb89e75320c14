"""Channel selection methods that build a pruned layer by adding channels (greedy forward selection)."""

from prunekit.selection.greedy import GreedyConfig, GreedyResult, LayerResult, greedy_select
from prunekit.selection.groups import budget_counts, greedy_targets

__all__ = ["GreedyConfig", "GreedyResult", "LayerResult", "budget_counts", "greedy_select", "greedy_targets"]
