"""Garbage-collection plugins (io.containerd.gc.v1)."""
