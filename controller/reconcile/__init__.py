"""Reconciliation: the pure planner and the adapters that perform its plans."""
