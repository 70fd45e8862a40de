"""Events (io.containerd.event.v1): the exchange that carries the daemon's events to subscribers."""
