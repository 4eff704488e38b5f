"""`cedana-helper`: the node helper's command line (serve, version)."""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import click

from kubectl_cedana.contract import COMPRESSIONS, DEFAULT_COMPRESSION
from sidecar import logs, version
from sidecar.config import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_CERTS_DIRS,
    DEFAULT_CHECKPOINT_DIR_SHARE,
    DEFAULT_CONTAINERD_CONFIG,
    DEFAULT_CRIU_RUNC_CONFIG,
    DEFAULT_DOCKER_CONFIGS,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_KEEP_ALIVE_TIMEOUT_S,
    DEFAULT_MAX_CHECKPOINT_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_LAYER_BYTES,
    DEFAULT_MAX_OPERATIONS,
    DEFAULT_MAX_OPERATIONS_PER_NAMESPACE,
    DEFAULT_POST_COPY_ABOVE_BYTES,
    DEFAULT_RUNTIME_ROOT,
    HelperConfig,
    NodeRegistrySettings,
)
from sidecar.node import cgroups, tool

LOG_LEVELS = ("debug", "info", "warning", "error")


def own_image(kube: Any) -> str | None:
    """The image of this helper's own container, from its pod (POD_NAMESPACE and POD_NAME,
    which the DaemonSet sets from the downward API); None outside a pod or unreadable."""
    namespace, name = os.environ.get("POD_NAMESPACE"), os.environ.get("POD_NAME")
    if not namespace or not name:
        return None
    try:
        pod = kube.get_pod(namespace, name) or {}
    except Exception as exc:  # noqa: BLE001 - the API may be unreachable at start
        logging.getLogger("sidecar").warning("cannot read this helper's pod: %s", exc)
        return None
    containers = (pod.get("spec") or {}).get("containers") or []
    chosen = next((c for c in containers if c.get("name") == "helper"), None) or \
        (containers[0] if containers else {})
    return str(chosen.get("image") or "") or None


@click.group()
def main() -> None:
    """The cedana node helper: checkpoint and restore this node's containers with runc/CRIU."""


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", default=1324, show_default=True, type=click.IntRange(1, 65535))
@click.option("--checkpoint-dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Directory that holds every checkpoint; requested paths must lie inside.")
@click.option("--runtime-root", "runtime_roots", multiple=True,
              default=[str(DEFAULT_RUNTIME_ROOT)], show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="runc or crun root of the node's runtime (repeatable): the only ones a "
                   "request may name; a request that names none looks in every one this node "
                   "has.")
@click.option("--containerd-address", "containerd_addresses", multiple=True,
              default=["/run/containerd/containerd.sock"], show_default=True,
              help="containerd socket (repeatable): the only ones a rootfs request may name; "
                   "the first is the default.")
@click.option("--registry-prefix", "registry_prefixes", multiple=True, metavar="HOST[/PATH]",
              help="Where the node's registry credentials may be used by the rootfs routes "
                   "(repeatable); {namespace} stands for the pod's namespace. None: nowhere.")
@click.option("--runc", "runc_path", default="runc", show_default=True, help="runc binary.")
@click.option("--crun", "crun_path", default="crun", show_default=True,
              help="crun binary: checkpoints the containers found under a crun root.")
@click.option("--criu", "criu_path", default="criu", show_default=True, help="criu binary.")
@click.option("--criu-guard", default="auto", show_default=True,
              help="What runc runs as CRIU for dumps, so CRIU dies with the helper: "
                   "auto finds cedana-criu-guard; none uses criu itself.")
@click.option("--criu-runc-config", default=str(DEFAULT_CRIU_RUNC_CONFIG), show_default=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="CRIU config file runc passes to CRIU (link-remap is set there).")
@click.option("--ctr", "ctr_path", default="ctr", show_default=True,
              help="containerd's ctr binary (reads images for rootfs commits).")
@click.option("--docker-config", "docker_configs", multiple=True,
              type=click.Path(dir_okay=False, path_type=Path),
              default=[str(p) for p in DEFAULT_DOCKER_CONFIGS], show_default=True,
              help="Docker-style credential files of the node, in order (repeatable).")
@click.option("--containerd-config", default=str(DEFAULT_CONTAINERD_CONFIG), show_default=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="containerd config whose CRI registry section gives credentials and TLS.")
@click.option("--certs-dir", "certs_dirs", multiple=True,
              type=click.Path(file_okay=False, path_type=Path),
              default=[str(p) for p in DEFAULT_CERTS_DIRS], show_default=True,
              help="certs.d directories with HOST/*.crt registry CAs (repeatable).")
@click.option("--kubeconfig", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Kubeconfig for the helper's own API calls (Events, caller checks); default: "
                   "the pod's service account.")
@click.option("--checkpoint-repository", default="", metavar="HOST/REPO",
              help="Registry repository for remote checkpoints (tag = checkpoint id), pushed "
                   "with the node's credentials; empty: checkpoints stay on the node.")
@click.option("--compression", default=DEFAULT_COMPRESSION, show_default=True,
              type=click.Choice(COMPRESSIONS),
              help="Default compression of remote checkpoints.")
@click.option("--max-checkpoints-per-container", default=0, show_default=True,
              type=click.IntRange(0), help="Retention: keep at most N per container (0: all).")
@click.option("--max-total-bytes", default=0, show_default=True, type=click.IntRange(0),
              help="Retention: local checkpoints of this node in at most B bytes (0: no limit).")
@click.option("--authorization", default="kubernetes", show_default=True,
              type=click.Choice(["kubernetes", "none"]),
              help="kubernetes: act only for callers Kubernetes vouches for and allows "
                   "(docs/security.md); none: trust every caller (tests on loopback only).")
@click.option("--reconcile/--no-reconcile", default=True, show_default=True,
              help="Act on the cedana.io Checkpoint, Restore and Migration objects of this node "
                   "(needs the Kubernetes API).")
@click.option("--placeholder-image", default="", envvar="CEDANA_PLACEHOLDER_IMAGE",
              metavar="IMAGE",
              help="Image holding /usr/local/bin/cedana-pause, which placeholder pods run so "
                   "that they need nothing from the workload's image. Default: this helper's "
                   "own image, read from its pod (POD_NAMESPACE, POD_NAME); none: placeholders "
                   "run /bin/sh from the workload's image.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(LOG_LEVELS, case_sensitive=False))
# -- checkpoint authenticity and size limits (docs/security.md) --
@click.option("--signing-key", "signing_key_file", default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help="File of 32+ random bytes every helper of the cluster shares: checkpoints "
                   "are signed with it and only checkpoints it verifies are restored. Without "
                   "it: a key of this node in the checkpoint directory (local checkpoints "
                   "only; no pushes, no pulls).")
@click.option("--max-checkpoint-bytes", default=DEFAULT_MAX_CHECKPOINT_BYTES, show_default=True,
              type=click.IntRange(1), help="Most bytes a checkpoint pulled from the registry "
                                           "may hold once unpacked.")
@click.option("--max-layer-bytes", default=DEFAULT_MAX_LAYER_BYTES, show_default=True,
              type=click.IntRange(1), help="Most bytes one image layer of /restore/rootfs may "
                                           "take, downloaded and unpacked.")
# -- resource limits (docs/security.md#limits) --
@click.option("--max-operations", default=DEFAULT_MAX_OPERATIONS, show_default=True,
              type=click.IntRange(0),
              help="Checkpoints, restores and rootfs commits/applies running at once on this "
                   "helper; beyond, 429 too_many_requests (0: no limit).")
@click.option("--max-operations-per-namespace", default=DEFAULT_MAX_OPERATIONS_PER_NAMESPACE,
              show_default=True, type=click.IntRange(0),
              help="... of them for pods of one namespace (0: no limit).")
@click.option("--max-checkpoint-dir-bytes", default=None, type=click.IntRange(0),
              metavar="BYTES",
              help="Quota of the checkpoint directory: a checkpoint or pull that would take it "
                   "beyond is refused with 507 quota_exceeded (0: no quota). Default: "
                   f"{DEFAULT_CHECKPOINT_DIR_SHARE:.0%} of its filesystem, computed at start.")
@click.option("--header-timeout", "header_timeout_s", default=DEFAULT_HEADER_TIMEOUT_S,
              show_default=True, type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="A connection that has not sent a request's complete headers this long "
                   "after it opened (or after the request's first byte) is closed.")
@click.option("--body-timeout", "body_timeout_s", default=DEFAULT_BODY_TIMEOUT_S,
              show_default=True, type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="A request body not received this long after the helper began to read it "
                   "is answered 408 request_timeout and its connection closed.")
@click.option("--keep-alive-timeout", "keep_alive_timeout_s",
              default=DEFAULT_KEEP_ALIVE_TIMEOUT_S, show_default=True, type=click.IntRange(1),
              metavar="SECONDS", help="Idle keep-alive connections are closed after this long.")
@click.option("--max-connections", default=DEFAULT_MAX_CONNECTIONS, show_default=True,
              type=click.IntRange(0),
              help="Connections open at once: while as many are open, requests are answered "
                   "503 (0: no limit).")
@click.option("--max-header-bytes", default=DEFAULT_MAX_HEADER_BYTES, show_default=True,
              type=click.IntRange(1024),
              help="Most bytes of a request's line and headers; beyond, 400 and closed.")
@click.option("--peer-port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="Receive checkpoints from the other helpers of the cluster on this port, "
                   "and send a migration's checkpoint straight to the target node's helper "
                   "(every helper of a cluster uses the same; 0: neither, migrations go "
                   "through the checkpoint registry).")
@click.option("--peer-address", default="", metavar="ADDRESS",
              help="Address the peer port listens on (the DaemonSet gives its pod's, which is "
                   "the node's). Default: every address.")
@click.option("--post-copy-above", "post_copy_above_bytes",
              default=DEFAULT_POST_COPY_ABOVE_BYTES, show_default=True, type=click.IntRange(0),
              metavar="BYTES",
              help="A migration to another node of a container holding this much memory or "
                   "more goes post-copy (its memory follows the restored process) unless it "
                   "says otherwise (Migration spec.lazy); 0: only when it asks.")
def serve(host: str, port: int, checkpoint_dir: Path, runtime_roots: tuple[Path, ...],
          containerd_addresses: tuple[str, ...], registry_prefixes: tuple[str, ...], runc_path: str,
          crun_path: str, criu_path: str, criu_guard: str, criu_runc_config: Path, ctr_path: str,
          docker_configs: tuple[Path, ...],
          containerd_config: Path, certs_dirs: tuple[Path, ...], kubeconfig: Path | None,
          checkpoint_repository: str, compression: str, max_checkpoints_per_container: int,
          max_total_bytes: int, authorization: str, reconcile: bool, placeholder_image: str,
          log_level: str,
          signing_key_file: Path | None, max_checkpoint_bytes: int,
          max_layer_bytes: int, max_operations: int, max_operations_per_namespace: int,
          max_checkpoint_dir_bytes: int | None, header_timeout_s: float, body_timeout_s: float,
          keep_alive_timeout_s: int, max_connections: int, max_header_bytes: int,
          peer_port: int, peer_address: str, post_copy_above_bytes: int) -> None:
    """Serve the REST API."""
    from sidecar.http.app import create_app
    from sidecar.http.server import serve as serve_http

    logs.configure(log_level)
    cgroups.join_node_cgroup_namespace()  # first: before any thread
    config = HelperConfig(
        checkpoint_dir=checkpoint_dir, runtime_root=runtime_roots[0],
        runtime_roots=tuple(runtime_roots[1:]), runc_path=runc_path, crun_path=crun_path,
        default_containerd_address=containerd_addresses[0],
        containerd_addresses=tuple(containerd_addresses[1:]),
        registry_prefixes=tuple(registry_prefixes),
        criu_path=criu_path, criu_guard=tool.find_criu_guard(criu_guard),
        enter_cgroups_path=tool.find_beside_or_on_path(tool.ENTER_CGROUPS_NAME),
        lazy_guard_path=tool.find_beside_or_on_path(tool.LAZY_GUARD_NAME),
        criu_runc_config=criu_runc_config, ctr_path=ctr_path,
        registry=NodeRegistrySettings(tuple(docker_configs), containerd_config,
                                      tuple(certs_dirs)),
        kubeconfig=kubeconfig, remote_repository=checkpoint_repository,
        default_compression=compression,
        max_checkpoints_per_container=max_checkpoints_per_container,
        max_total_bytes=max_total_bytes,
        signing_key_file=signing_key_file, max_checkpoint_bytes=max_checkpoint_bytes,
        max_layer_bytes=max_layer_bytes,
        max_operations=max_operations, max_operations_per_namespace=max_operations_per_namespace,
        max_checkpoint_dir_bytes=checkpoint_dir_quota(checkpoint_dir, max_checkpoint_dir_bytes),
        header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s,
        keep_alive_timeout_s=keep_alive_timeout_s, max_connections=max_connections,
        max_header_bytes=max_header_bytes, peer_port=peer_port,
        peer_address=peer_address, post_copy_above_bytes=post_copy_above_bytes,
    )
    check_signing_key(config)
    check_retention_below_quota(config)
    from sidecar.kube.api import KubeAPI
    from sidecar.ops.access import build_verifier

    # one connection for Events and for caller checks
    kube = KubeAPI.connect(config.kubeconfig, config.node_name)
    if kube is None:
        logging.getLogger("sidecar").warning(
            "no Kubernetes API: containers are known by their runtime's annotations only, "
            "not checked against their pods")
    if kube is not None:
        config = dataclasses.replace(
            config, placeholder_image=placeholder_image or own_image(kube) or "")
    try:
        verifier = build_verifier(authorization, kube)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    app = create_app(config, kube=kube, verifier=verifier)
    if peer_port:
        from sidecar.ops.peer import PeerServer

        try:
            PeerServer(app.state.helper, peer_address or "0.0.0.0", peer_port).start()
        except OSError as exc:
            raise click.ClickException(f"cannot receive checkpoints on "
                                       f"{peer_address or '0.0.0.0'}:{peer_port}: {exc}"
                                       ) from exc
    if reconcile and kube is not None:
        from sidecar.kube.objects import CedanaObjects
        from sidecar.reconcile.controller import Controller

        Controller(app.state.helper, CedanaObjects(kube.api_client)).start()
    serve_http(app, config, host, port, log_level)


def check_retention_below_quota(config: HelperConfig) -> None:
    """Retention frees space only if it starts below the quota, which stops checkpoints."""
    quota, retained = config.max_checkpoint_dir_bytes, config.max_total_bytes
    if quota and retained >= quota:
        logging.getLogger("sidecar.cli").warning(
            "--max-total-bytes %d is not below the checkpoint directory's quota %d: new "
            "checkpoints are refused (quota_exceeded) before retention removes old ones; keep "
            "it below the quota", retained, quota,
            extra={"max_total_bytes": retained, "max_checkpoint_dir_bytes": quota})


def checkpoint_dir_quota(checkpoint_dir: Path, given: int | None) -> int:
    """--max-checkpoint-dir-bytes, or (not given) a share of the checkpoint directory's
    filesystem; logged either way."""
    from sidecar.ops.limits import default_quota

    log = logging.getLogger("sidecar.cli")
    if given is not None:
        if given:
            log.info("checkpoint directory quota: %d bytes (--max-checkpoint-dir-bytes)", given,
                     extra={"max_checkpoint_dir_bytes": given})
        else:
            log.info("checkpoint directory quota: none (--max-checkpoint-dir-bytes 0)",
                     extra={"max_checkpoint_dir_bytes": 0})
        return given
    try:
        quota, filesystem = default_quota(checkpoint_dir)
    except OSError as exc:
        raise click.ClickException(f"cannot read the size of the filesystem of {checkpoint_dir} "
                                   f"for its default quota ({exc}); pass "
                                   "--max-checkpoint-dir-bytes") from exc
    log.info("checkpoint directory quota: %d bytes, %.0f%% of the %d bytes of its filesystem "
             "(--max-checkpoint-dir-bytes to choose)", quota, DEFAULT_CHECKPOINT_DIR_SHARE * 100,
             filesystem, extra={"max_checkpoint_dir_bytes": quota,
                                "filesystem_bytes": filesystem})
    return quota


def check_signing_key(config: HelperConfig) -> None:
    """A helper whose key cannot be used does not start; one without the cluster's key says
    what it will not do."""
    from sidecar.storage import signing

    try:
        key = (signing.load_key(config.signing_key_file) if config.signing_key_file
               else signing.node_local_key(config.checkpoint_dir))
    except (signing.KeyUnusable, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    log = logging.getLogger("sidecar.cli")
    log.info("checkpoints are signed and verified with %s", key.describe())
    if not key.shared and config.remote_repository:
        log.warning("--checkpoint-repository without --signing-key: this helper neither pushes "
                    "checkpoints to %s nor restores any from it", config.remote_repository)


@main.command("version")
def show_version() -> None:
    """Print the helper's version."""
    click.echo(version)


if __name__ == "__main__":
    main()

