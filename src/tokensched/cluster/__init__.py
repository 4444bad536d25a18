"""Clusters of replicas behind a router (see docs/cluster.md)."""

from tokensched.cluster.routers import ROUTERS, ReplicaView, Router, get_router
from tokensched.cluster.sim import ClusterResult, ClusterSimulator, simulate_cluster

__all__ = ["ROUTERS", "ClusterResult", "ClusterSimulator", "ReplicaView", "Router", "get_router", "simulate_cluster"]
