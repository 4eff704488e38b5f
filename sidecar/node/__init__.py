"""This node: its containers (runc roots), processes, cgroups and freezer, and the external
tools the helper drives (runc, CRIU, ctr), each wrapped in one module."""
