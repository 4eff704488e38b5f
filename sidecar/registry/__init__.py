"""OCI registries: the distribution API client, the node's registry credentials and TLS
trust, and checkpoints stored as images."""
