"""The model as one dependency graph: nodes, groups of coupled channels, the handler
table by layer type, plans, and the surgery that cuts them."""

from pruner.graph.dag import ChannelGroup, Graph, Member, Weights, build_graph
from pruner.graph.plan import GroupPlan, Plan
from pruner.graph.surgery import advance, apply_plan, as_model

__all__ = ["ChannelGroup", "Graph", "GroupPlan", "Member", "Plan", "Weights", "advance",
           "apply_plan", "as_model", "build_graph"]
