"""Measuring models through the binding: metrics, evaluation, sensitivity, recalibration, plans, plots."""
