"""Evaluation: predictions, metrics (NE, AUC, gAUC, calibration), seeds comparison, plots, offline A/B."""
