"""OCI images without a daemon: the image vocabulary (``oci``), image archives (``archive``) and a
deterministic image builder for tests and plugin authors (``build``)."""
