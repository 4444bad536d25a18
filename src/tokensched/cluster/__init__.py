"""Clusters of replicas behind a router (see docs/cluster.md)."""

from tokensched.cluster.routers import ROUTERS, ReplicaView, Router, get_router
from tokensched.cluster.sim import ClusterResult, ClusterSimulator, simulate_cluster
from tokensched.cluster.llumnix import LlumnixSimulator  # after sim; registers router "llumnix"

__all__ = ["ROUTERS", "ClusterResult", "ClusterSimulator", "LlumnixSimulator", "ReplicaView", "Router", "get_router",
           "simulate_cluster"]
