"""Run the benchmark and write docs/benchmarks.md, docs/benchmarks/*.png and results.json.

Environment: BENCH_RUNS (5), BENCH_SIZES (64,256,1024,4096 MiB), BENCH_MIGRATION_SIZES
(64,256,1024,4096 MiB: for m and p), BENCH_METHODS (a,b,c,d,e,f,g,m,p),
BENCH_OUT (docs), BENCH_WORK (/var/lib/kubectl-cedana-bench), KUBECONFIG (the lab's)."""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import threading
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import extras, report
from bench.bare_runc import BareRunc
from bench.migration import Migration, link_mb_s
from bench.cluster import (
    Cluster,
    HelperRest,
    KubeletCheckpointApi,
    PluginEndToEnd,
    ResourcePath,
    RestSameHelper,
)
from bench.podman import Podman
from bench.procs import BenchError, loadavg, run

REPO = Path(__file__).resolve().parents[1]
IMAGE = "docker.io/cedana-lab/workload:1"
IMAGE_TAR = Path("/var/cache/kubectl-cedana/images/workload.tar")
INTERVAL_MS = 10
ATTEMPTS = 3


def say(text: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def env_list(name: str, default: str) -> list[str]:
    return [x.strip() for x in os.environ.get(name, default).split(",") if x.strip()]


def machine_facts() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    os_name = ""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            os_name = line.split("=", 1)[1].strip('"')
    return {"cpus": os.cpu_count(), "cpu_model": model, "mem_gib": mem_kib / 2**20,
            "kernel": platform.release(), "os": os_name}


def bench_commit() -> str:
    try:
        head = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False)
        dirty = run(["git", "-C", str(REPO), "status", "--porcelain", "--", "bench", "sidecar",
                     "kubectl_cedana"], check=False)
    except (OSError, BenchError):
        return "unknown"
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def tool_versions(cluster: Cluster | None, podman: Podman | None) -> dict[str, str]:
    def first_line(args: list[str]) -> str:
        try:
            out = run(args, check=False, timeout=30)
        except (OSError, BenchError):
            return "unavailable"
        return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) \
            else "unavailable"

    versions = {"runc": first_line(["runc", "--version"]).replace("runc version ", ""),
                "criu": first_line(["/usr/local/sbin/criu", "--version"]).replace("Version: ", ""),
                "kubectl": first_line(["kubectl", "version", "--client"]).split(": ")[-1],
                "python": platform.python_version()}
    if podman and podman.version:
        versions["podman"] = podman.version.replace("podman version ", "")
    if cluster and cluster.helper_version:
        versions["helper"] = str(cluster.helper_version.get("helper"))
    return versions


class LoadSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[list[float]] = []
        self.start_time = time.monotonic()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(10):
            self.samples.append([round(time.monotonic() - self.start_time), loadavg()[0]])


def disk_free_mib(path: Path) -> int:
    usage = shutil.disk_usage(path if path.exists() else path.parent)
    return usage.free // 2**20


def one_cycle(method: Any, mib: int, run_no: int) -> dict[str, float]:
    ck_ms, size, handle = method.checkpoint(mib, run_no)
    if getattr(method, "dump_only", False):  # nothing restores it: its figures are the dump's
        method.discard(handle)
        return {"checkpoint_ms": ck_ms, "size_bytes": size}
    timing = method.restore(mib, handle)
    return {"checkpoint_ms": ck_ms, "restore_ms": timing.ready_ms,
            "restore_cmd_ms": timing.action_ms, "size_bytes": size}


def compression_input(cluster: Cluster | None, helper: HelperRest | None, runc: BareRunc | None,
                      mib: int, work: Path) -> tuple[str, list[Path], Any]:
    """A real checkpoint of memhog: the helper's own when the cluster is in this run."""
    if cluster and helper:
        _ms, _size, checkpoint_id = helper.checkpoint(mib, 0)
        path = helper.checkpoint_dir(checkpoint_id)
        return (f"the helper's checkpoint of memhog {mib} MiB (`{path.name}/`, all files)",
                extras.checkpoint_files(path), lambda: helper.delete_checkpoint(checkpoint_id))
    if runc:
        _ms, _size, images = runc.checkpoint(mib, 99)
        return (f"bare runc checkpoint of memhog {mib} MiB", extras.checkpoint_files(images),
                lambda: shutil.rmtree(images, ignore_errors=True))
    raise BenchError("no method that makes a checkpoint is selected")


def migrations(cluster: Cluster, sizes: list[int], runs: int, results: dict[str, Any],
               kinds: list[str]) -> None:
    """(m) stop-and-copy and (p) post-copy migrations to node 2, size by size (the two kinds
    in turn), and the link's speed they are judged by."""
    movers = [Migration(cluster, lazy=kind == "p") for kind in ("m", "p") if kind in kinds]
    try:
        movers[0].setup()
        say("link speed to node 2")
        link = link_mb_s()
    except (BenchError, OSError) as exc:
        for mover in movers:
            results["method_errors"][mover.name] = str(exc)
        return
    for mover in movers:
        mover.token = movers[0].token
        results["migration" if mover.name == "m" else "postcopy"] = {"link_mb_s": link,
                                                                      "sizes": {}}
    for mib in sizes:
        for mover in movers:
            cell: dict[str, Any] = {"failures": []}
            results["migration" if mover.name == "m" else "postcopy"]["sizes"][str(mib)] = cell
            for run_no in range(runs):
                os.sync()
                try:
                    figures = mover.once(mib)
                except (BenchError, OSError, ValueError, KeyError) as exc:
                    cell["failures"].append(f"{type(exc).__name__}: {exc}"[:600])
                    say(f"{mib} MiB ({mover.name}) run {run_no} failed: {exc}")
                    continue
                for key, value in figures.items():
                    cell.setdefault(key, []).append(value)
                say(f"{mib} MiB ({mover.name}) run {run_no}: pause {figures['pause_ms']} ms "
                    f"(checkpoint {figures['checkpoint_ms']}, transfer "
                    f"{figures['transfer_ms']} {figures['transfer']}, restore "
                    f"{figures['restore_ms']}, memory after {figures['memory_ms']})")


def main() -> int:
    runs = int(os.environ.get("BENCH_RUNS", "5"))
    sizes = [int(s) for s in env_list("BENCH_SIZES", "64,256,1024,4096")]
    wanted = env_list("BENCH_METHODS", "a,b,c,d,e,f,g,m,p")
    migration_sizes = [int(s) for s in env_list("BENCH_MIGRATION_SIZES", "64,256,1024,4096")]
    out = Path(os.environ.get("BENCH_OUT", REPO / "docs"))
    work = Path(os.environ.get("BENCH_WORK", "/var/lib/kubectl-cedana-bench"))
    kubeconfig = os.environ.get("KUBECONFIG", "/var/lib/kubectl-cedana-lab/admin.kubeconfig")
    venv_bin = Path(sys.executable).parent
    work.mkdir(parents=True, exist_ok=True)
    # every command runs as in a user's shell, where Python keeps the bytecode it compiles: a
    # shell with PYTHONDONTWRITEBYTECODE=1 (this machine's tool shells set it) had every
    # kubectl cedana of (a) compile the plugin's modules again, ~25 ms of its overhead
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

    started = datetime.now(UTC)
    sampler = LoadSampler()
    sampler.start()
    results: dict[str, Any] = {
        "meta": {"started": started.strftime("%Y-%m-%d %H:%M UTC"), "runs": runs,
                 "sizes_mib": sizes, "interval_ms": INTERVAL_MS, "loadavg_start": loadavg(),
                 "machine": machine_facts(), "bench_commit": bench_commit(),
                 "python_bytecode": "kept",
                 "method": {"order": "rotating", "sync_before_checkpoint": True,
                            "b_helper": "host-process"}},
        "cr": {}, "method_errors": {},
    }
    say(f"bench: runs={runs} sizes={sizes} methods={wanted} load={loadavg()}")

    cluster = Cluster(kubeconfig, venv_bin, IMAGE, INTERVAL_MS) \
        if {"a", "b", "e", "f", "g", "m", "p"} & set(wanted) else None
    methods: dict[str, Any] = {}
    if cluster:
        try:
            cluster.setup()
        except BenchError as exc:
            for name in ("a", "b", "e", "f", "g", "m"):
                results["method_errors"][name] = str(exc)
            cluster = None
    if cluster and "a" in wanted:
        try:  # (a) needs the helper DaemonSet; it is installed if missing and left installed
            cluster.ensure_helper()
            methods["a"] = PluginEndToEnd(cluster)
        except BenchError as exc:
            results["method_errors"]["a"] = str(exc)
    if cluster and "b" in wanted:
        helper = HelperRest(cluster, work)
        try:
            helper.setup()
            methods["b"] = helper
        except BenchError as exc:
            results["method_errors"]["b"] = str(exc)
            helper.teardown()
    if cluster and "e" in wanted:
        methods["e"] = KubeletCheckpointApi(cluster)
    for name, kind in (("f", ResourcePath), ("g", RestSameHelper)):
        if cluster and name in wanted:  # the DaemonSet's helper of this node, both
            try:
                paired = kind(cluster)
                paired.setup()
                methods[name] = paired
            except (BenchError, OSError) as exc:
                results["method_errors"][name] = str(exc)
    runc = BareRunc(work, IMAGE_TAR, INTERVAL_MS) if "c" in wanted else None
    podman = Podman(work, IMAGE_TAR, IMAGE, INTERVAL_MS) if "d" in wanted else None
    for method in (runc, podman):
        if method is None:
            continue
        try:
            method.setup()
            methods[method.name] = method
        except BenchError as exc:
            results["method_errors"][method.name] = str(exc)
    comp_mib = 256 if 256 in sizes else sizes[0]

    try:
        for mib in sizes:
            free = disk_free_mib(work)
            if free < 3 * mib + 2048:
                raise BenchError(f"only {free} MiB free in {work}; {mib} MiB runs need more")
            say(f"{mib} MiB: starting sources (free disk {free} MiB, load {loadavg()})")
            if cluster:
                cluster.prepare_size(mib, runs, [m for m in ("a", "b") if m in methods])
            active = {}
            for name, method in methods.items():
                try:
                    method.start_source(mib)
                    active[name] = method
                except BenchError as exc:
                    results["cr"].setdefault(name, {})[str(mib)] = {"failures": [str(exc)]}
            for run_no in range(runs):
                # interleaved, and the order rotates per run: load from other users and the
                # previous method's leftovers do not always hit the same method
                order = list(active.items())
                order = order[run_no % len(order):] + order[:run_no % len(order)] if order else []
                for name, method in order:
                    cell = results["cr"].setdefault(name, {}).setdefault(
                        str(mib), {"checkpoint_ms": [], "restore_ms": [], "restore_cmd_ms": [],
                                   "size_bytes": [], "failures": []})
                    for _attempt in range(ATTEMPTS):
                        # no dirty data of the previous method is written back during this one
                        os.sync()
                        try:
                            figures = one_cycle(method, mib, run_no)
                        except (BenchError, OSError, ValueError, KeyError) as exc:
                            cell["failures"].append(f"{type(exc).__name__}: {exc}"[:600])
                            say(f"{mib} MiB ({name}) run {run_no} failed: {exc}")
                            if cluster and name == "a":
                                try:
                                    cluster.ensure_helper()
                                except BenchError as again:
                                    say(f"helper DaemonSet: {again}")
                            continue
                        for key, value in figures.items():
                            cell[key].append(value)
                        restore = figures.get("restore_ms")
                        say(f"{mib} MiB ({name}) run {run_no}: checkpoint "
                            f"{figures['checkpoint_ms']:.0f} ms, restore "
                            f"{'-' if restore is None else f'{restore:.0f} ms'}, "
                            f"{figures['size_bytes'] / 2**20:.0f} MiB")
                        break
            if mib == comp_mib and ("b" in methods or "c" in methods):
                say(f"compression on a {mib} MiB checkpoint")
                source, files, cleanup = compression_input(
                    cluster, methods.get("b"), methods.get("c"), mib, work)
                try:
                    results["compression"] = {
                        "source": source, "mib": mib,
                        "bytes": sum(p.stat().st_size for p in files),
                        "checkpoint": extras.compress_files(files)}
                finally:
                    cleanup()
                sample = extras.random_sample(work, 64)
                results["compression"]["random"] = extras.compress_files(sample)
                sample[0].unlink()
            for method in active.values():
                method.stop_source(mib)
            if cluster:
                cluster.finish_size(mib)
        kinds: list[str] = [k for k in ("m", "p") if k in wanted]
        if cluster and kinds:
            migrations(cluster, migration_sizes, runs, results, kinds)
        say("machine limits")
        results["machine"] = {"write": extras.sequential_write(work, max(sizes)),
                              "memcpy": extras.memcpy_speed()}
        say("start-up")
        env = {**os.environ, "KUBECONFIG": kubeconfig,
               "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}"}
        commands = {
            report.HELP_LABEL: ["kubectl", "cedana", "--help"],
            "kubectl cedana version --client": ["kubectl", "cedana", "version", "--client"],
            "kubectl cedana version": ["kubectl", "cedana", "version"],
            "kubectl version --client": ["kubectl", "version", "--client"],
        }
        results["meta"]["startup_runs"] = 20
        results["startup"] = extras.startup(commands, env, 20)
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        for method in methods.values():
            try:
                method.teardown()
            except (BenchError, OSError) as exc:
                say(f"teardown of {method.name}: {exc}")
        if cluster:
            cluster.teardown()
        sampler.stopped.set()
        results["meta"]["versions"] = tool_versions(cluster, podman)
        results["meta"]["loadavg_end"] = loadavg()
        results["meta"]["loadavg_samples"] = sampler.samples
        finished = datetime.now(UTC)
        results["meta"]["finished"] = finished.strftime("%Y-%m-%d %H:%M UTC")
        results["meta"]["duration_s"] = (finished - started).total_seconds()
        save_results(results, out)  # kept even when a method failed
    render_report(results, out)
    say(f"wrote {out / 'benchmarks.md'} in {(time.monotonic() - sampler.start_time) / 60:.1f} min")
    return 0


def render_only() -> int:
    """`python -m bench render`: rewrite the report from results.json (e.g. after editing
    bench/notes.md) without measuring again."""
    out = Path(os.environ.get("BENCH_OUT", REPO / "docs"))
    results = json.loads((out / "benchmarks" / "results.json").read_text())
    save_results(results, out)
    render_report(results, out)
    return 0


def save_results(results: dict[str, Any], out: Path) -> None:
    """results.json under `out`, with bench/notes.md's prose."""
    notes = REPO / "bench" / "notes.md"
    results["notes"] = notes.read_text() if notes.exists() else ""
    (out / "benchmarks").mkdir(parents=True, exist_ok=True)
    (out / "benchmarks" / "results.json").write_text(json.dumps(results, indent=1) + "\n")


def render_report(results: dict[str, Any], out: Path) -> None:
    """The plots and benchmarks.md under `out`."""
    plots = report.plot(results, out / "benchmarks")
    (out / "benchmarks.md").write_text(report.render(results, plots))


USAGE = "usage: python -m bench [render]\n(render: docs/benchmarks.md again from results.json)"


def entry(args: list[str]) -> int:
    """`python -m bench` runs everything (~25 min on the lab); `render` only writes the report
    again; help or anything else is answered without starting a run."""
    if args in (["-h"], ["--help"], ["help"]):
        print(f"{USAGE}\n\n{__doc__}")
        return 0
    if args == ["render"]:
        return render_only()
    if args:
        print(f"{USAGE}\nbench: unknown arguments {' '.join(args)!r}; the settings are "
              "environment variables (python -m bench --help)", file=sys.stderr)
        return 2
    return main()


if __name__ == "__main__":
    sys.exit(entry(sys.argv[1:]))
