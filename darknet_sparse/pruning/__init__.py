"""Unstructured pruning: policies, the pruner, the level search and the AGP schedule."""
