"""Channel selection methods that build a pruned layer by adding channels (greedy forward selection)."""

from prunekit.selection.greedy import GreedyConfig, LayerResult, budget_counts, greedy_select, greedy_targets

__all__ = ["GreedyConfig", "LayerResult", "budget_counts", "greedy_select", "greedy_targets"]
