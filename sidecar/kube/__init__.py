"""The helper's own access to the Kubernetes API (its service account or a kubeconfig)."""
