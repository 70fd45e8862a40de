"""Plugin type strings this distribution provides or uses; a plugin's URI is ``type.id``."""

GREETER = "io.corral.greeter.v1"
AUDIT = "io.corral.audit.v1"

METADATA = "io.containerd.metadata.v1"
"""containerd's metadata type, provided by corral's built-in sqlite store."""
