#!/usr/bin/env python3
"""Add or remove one registry's credentials in a docker-style config file, keeping the rest.

    docker_config.py [--config FILE] add REGISTRY USER PASSWORD
    docker_config.py [--config FILE] remove REGISTRY

FILE defaults to the node's docker config ($DOCKER_CONFIG/config.json, /root/.docker/config.json);
the kubelet reads the same format from its root directory (/var/lib/kubelet/config.json)."""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path

DEFAULT = Path(os.environ.get("DOCKER_CONFIG", "/root/.docker")) / "config.json"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, default=DEFAULT)
    parser.add_argument("action", choices=["add", "remove"])
    parser.add_argument("registry")
    parser.add_argument("credentials", nargs="*", metavar="USER PASSWORD")
    args = parser.parse_args()
    config: Path = args.config
    if args.action == "remove" and not config.exists():
        return 0
    data = json.loads(config.read_text()) if config.exists() else {}
    auths = data.setdefault("auths", {})
    if args.action == "add":
        if len(args.credentials) != 2:
            parser.error("add needs USER PASSWORD")
        user, password = args.credentials
        auths[args.registry] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    else:
        auths.pop(args.registry, None)
    config.parent.mkdir(parents=True, exist_ok=True)
    tmp = config.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
