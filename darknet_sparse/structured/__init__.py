"""Structured pruning: the channel graph, slimming, data ranking and the least-squares refit."""
