"""corral.api: the wire — protos, generated types, server, client, CLI and daemon."""
