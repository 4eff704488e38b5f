"""`make bench`: checkpoint/restore cost of kubectl cedana against bare runc and podman.

Never run by `make test`; nothing here is a timed assertion. See docs/benchmarks.md.
"""
