"""Catalog tagging: the job, its actors and the predictions schema."""
