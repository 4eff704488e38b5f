#!/usr/bin/env python3
"""Add or remove one registry's credentials in the node's docker config, keeping the rest."""
from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

CONFIG = Path(os.environ.get("DOCKER_CONFIG", "/root/.docker")) / "config.json"


def main() -> int:
    action, registry = sys.argv[1], sys.argv[2]
    data = json.loads(CONFIG.read_text()) if CONFIG.exists() else {}
    auths = data.setdefault("auths", {})
    if action == "add":
        user, password = sys.argv[3], sys.argv[4]
        auths[registry] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    elif action == "remove":
        auths.pop(registry, None)
    else:
        print(f"unknown action {action}", file=sys.stderr)
        return 2
    CONFIG.parent.mkdir(parents=True, exist_ok=True)
    tmp = CONFIG.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, CONFIG)
    return 0


if __name__ == "__main__":
    sys.exit(main())
