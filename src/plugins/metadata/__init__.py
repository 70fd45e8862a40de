"""Metadata plugins: namespaced records over the backends."""
