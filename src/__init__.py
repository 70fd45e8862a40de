"""corral: a container daemon in the shape of containerd, built from pip-installable plugins."""

__version__ = "0.1.0"
