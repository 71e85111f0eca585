"""The prune/retrain loop."""
