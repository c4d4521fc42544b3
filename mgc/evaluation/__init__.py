"""Metrics, scoring, plots, reports and the evaluate job."""
