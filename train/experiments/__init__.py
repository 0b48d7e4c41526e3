"""Experiments: one tracked run, sweeps and trials, cross-validation, MLflow tracking and its server, provenance."""
