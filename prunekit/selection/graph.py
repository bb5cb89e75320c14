"""Run a torch.fx graph node by node, caching what does not depend on a gated activation.

Greedy forward selection evaluates many candidate gates on one activation: the part of the
network upstream of it (the *prefix*) runs once per minibatch; only the nodes that depend on
it (the *suffix*) are re-run, for all candidates at once stacked along the batch axis.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, fx

from prunekit.errors import ConfigError


class GraphRunner:
    """Runs a traced model node by node so the part upstream of a gate can be cached."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.nodes = list(gm.graph.nodes)
        placeholder = next(n for n in self.nodes if n.op == "placeholder")
        self.batchy = descendants(placeholder)  # nodes whose values carry the batch axis

    def _exec(self, node: fx.Node, value: Callable[[fx.Node], object]):
        """Evaluate one node, reading its inputs through `value(node)`."""
        args = fx.node.map_arg(node.args, value)
        kwargs = fx.node.map_arg(node.kwargs, value)
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "get_attr":
            obj = self.gm
            for part in node.target.split("."):
                obj = getattr(obj, part)
            return obj
        raise ConfigError(f"greedy selection cannot execute fx node '{node.name}' ({node.op}).")

    def output_node(self) -> fx.Node:
        """The node whose value is the model output."""
        return next(n for n in self.nodes if n.op == "output").args[0]

    def run(self, x: Tensor, gates=None, alpha: Tensor | None = None) -> Tensor:
        """Full forward pass; the value of every node in `gates` (one node or a collection) is
        multiplied channel-wise by `alpha`."""
        gates = as_gates(gates)
        env: dict[fx.Node, object] = {}
        for node in self.nodes:
            if node.op == "placeholder":
                env[node] = x
            elif node.op == "output":
                return env[node.args[0]]
            else:
                env[node] = self._exec(node, env.__getitem__)
                if node in gates:
                    env[node] = env[node] * channel_view(alpha, env[node])
        raise ConfigError("traced graph has no output node.")

    def prefix(self, x: Tensor, dependents: set[fx.Node]) -> dict[fx.Node, object]:
        """Values of every node that does not depend on the gate (the gate's own value included)."""
        env: dict[fx.Node, object] = {}
        for node in self.nodes:
            if node.op == "placeholder":
                env[node] = x
            elif node.op != "output" and node not in dependents:
                env[node] = self._exec(node, env.__getitem__)
        return env

    def suffix(self, env: dict[fx.Node, object], gates, dependents: set[fx.Node], alpha: Tensor,
               wanted: list[fx.Node]) -> list[Tensor]:
        """Re-run the nodes downstream of `gates` once per row of `alpha` ([k, C]), stacked on the batch axis.

        Every gate node's value is multiplied by its candidate's gate: a gate upstream of all
        others (its value cached in `env`) becomes k candidate-major copies, a gate further down
        (already stacked) is multiplied copy by copy. Cached values that carry the batch axis are
        tiled k times. Returns the values of the `wanted` nodes ([k*B, ...]).
        """
        gates = as_gates(gates)
        k = alpha.shape[0]
        needed = ancestors(wanted) | set(wanted)
        local: dict[fx.Node, object] = {}

        def value(n: fx.Node):
            if n not in local:
                v = env[n]
                if k > 1 and n in self.batchy and isinstance(v, Tensor):
                    v = v.repeat(k, *([1] * (v.dim() - 1)))
                local[n] = v
            return local[n]

        for node in self.nodes:
            if node in gates and node not in dependents and node in needed:
                v = env[node]  # [B, C, ...] -> [k, B, C, ...] with candidate i's gate
                local[node] = (stacked_view(alpha, v.unsqueeze(0)) * v.unsqueeze(0)).flatten(0, 1)
            elif node in dependents and node in needed and node.op != "output":
                v = self._exec(node, value)
                if node in gates:
                    v = v.view(k, -1, *v.shape[1:])
                    v = (stacked_view(alpha, v) * v).flatten(0, 1)
                local[node] = v
        return [local[n] if n in local else value(n) for n in wanted]


def as_gates(gates) -> set[fx.Node]:
    """A gate argument (None, one node, or a collection of nodes) as a set of nodes."""
    if gates is None:
        return set()
    if isinstance(gates, fx.Node):
        return {gates}
    return set(gates)


def downstream(gates) -> set[fx.Node]:
    """Every node depending on any gate (the gates themselves only when they depend on another gate)."""
    out: set[fx.Node] = set()
    for g in as_gates(gates):
        out |= descendants(g)
    return out


def channel_view(alpha: Tensor, like: Tensor) -> Tensor:
    """Reshape a [C] (or [K, C]) gate to broadcast over [B, C, ...] (or [K, B, C, ...])."""
    extra = like.dim() - 2
    return alpha.view(*alpha.shape, *([1] * extra))


def stacked_view(alpha: Tensor, like: Tensor) -> Tensor:
    """Reshape a [k, C] gate to broadcast over [k or 1, B, C, ...]."""
    return alpha.view(alpha.shape[0], 1, alpha.shape[1], *([1] * (like.dim() - 3)))


def reachable(start, step) -> set[fx.Node]:
    """Every node reached from `start` by repeatedly following `step(node)` edges."""
    seen, stack = set(), list(start)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(step(n))
    return seen


def descendants(node: fx.Node) -> set[fx.Node]:
    return reachable(node.users, lambda n: n.users)


def ancestors(nodes: list[fx.Node]) -> set[fx.Node]:
    return reachable((a for n in nodes for a in n.all_input_nodes), lambda n: n.all_input_nodes)
