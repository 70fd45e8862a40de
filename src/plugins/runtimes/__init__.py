"""Runtimes: the task contract and its implementations."""
