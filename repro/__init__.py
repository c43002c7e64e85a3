"""Shared machinery of the Grokfast reproduction suite: config, engine, metrics, plots, tasks."""
