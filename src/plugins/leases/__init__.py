"""Lease plugins (io.containerd.lease.v1)."""
