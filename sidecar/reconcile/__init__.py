"""The helper's second way in: the cedana.io objects (Checkpoint, Restore, Migration) of its
node, watched through the Kubernetes API and acted on with the operations of sidecar.ops."""
