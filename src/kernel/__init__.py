"""corral's microkernel: plugin registry, discovery, ordering, config and lifecycle."""
