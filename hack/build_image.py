#!/usr/bin/env python3
"""Write a docker-archive image (manifest.json + config + one layer) from a directory tree.

The lab has no registry to pull from, so its images are made here and loaded with
`ctr -n k8s.io images import`. The archive is reproducible: entries sorted, owner root,
mtime fixed, so the same tree gives the same image id.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

EPOCH = 0


def _tar_tree(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        paths = sorted(p for p in root.rglob("*"))
        for path in paths:
            rel = path.relative_to(root).as_posix()
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = EPOCH
            info.pax_headers = {}
            if info.isreg():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    return buf.getvalue()


def build(tree: Path, name: str, out: Path, entrypoint: list[str], cmd: list[str],
          env: list[str], workdir: str) -> str:
    layer = _tar_tree(tree)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Entrypoint": entrypoint or None, "Cmd": cmd or None, "Env": env,
                   "WorkingDir": workdir},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z",
                     "created_by": f"kubectl-cedana hack/build_image.py {name}"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_id = hashlib.sha256(config_bytes).hexdigest()
    layer_dir = diff_id.split(":", 1)[1]
    manifest = [{"Config": f"{config_id}.json", "RepoTags": [name],
                 "Layers": [f"{layer_dir}/layer.tar"]}]
    entries = {
        f"{config_id}.json": config_bytes,
        f"{layer_dir}/layer.tar": layer,
        "manifest.json": json.dumps(manifest, sort_keys=True).encode(),
    }
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for arcname in sorted(entries):
            data = entries[arcname]
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            info.mtime = EPOCH
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, out)
    return config_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tree", required=True, type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--entrypoint", default="[]", help="JSON list")
    ap.add_argument("--cmd", default="[]", help="JSON list")
    ap.add_argument("--env", action="append",
                    default=None, help="KEY=VALUE (repeatable)")
    ap.add_argument("--workdir", default="/")
    args = ap.parse_args()
    env = args.env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    image_id = build(args.tree, args.name, args.out, json.loads(args.entrypoint),
                     json.loads(args.cmd), env, args.workdir)
    print(image_id)


if __name__ == "__main__":
    main()
