"""docs/benchmarks.md and its plots from the results of one run (results.json)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.migration import ALLOWANCE_MS, LINK_MIB, floor_ms
from bench.stats import Summary, Target, linear_fit, overhead_ms, ratio, summarize, \
    throughput_mb_s

METHODS = {"a": "(a) kubectl cedana", "b": "(b) helper REST", "c": "(c) bare runc",
           "d": "(d) podman", "e": "(e) kubelet checkpoint API (dump only)",
           "f": "(f) Checkpoint object (dump only)",
           "g": "(g) helper REST, same helper as (f) (dump only)"}
#: methods measured apart from the checkpoint/restore table
OTHER_METHODS = {"m": "(m) migrate --to-node"}
TARGET_AC = Target("(a)/(c) at 1 GiB", 1.15)
TARGET_AD = Target("(a)/(d)", 0.67)
#: what a checkpoint through a resource may add over the same checkpoint through the REST API
TARGET_FG = Target("(f)−(g), a Checkpoint object over REST on the same helper", 100.0)
TARGET_HELP = Target("`kubectl cedana --help` first byte", 300.0)
HELP_LABEL = "kubectl cedana --help"
RATIO_PAIRS = (("a", "c"), ("b", "c"), ("a", "d"))
PHASES = (("checkpoint", "checkpoint_ms"), ("restore", "restore_ms"), ("total", None))


def _fmt(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _cell(summary: Summary | None, digits: int = 0) -> str:
    if summary is None:
        return "–"
    return (f"{_fmt(summary.median, digits)} ({_fmt(summary.low, digits)}–"
            f"{_fmt(summary.high, digits)})")


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def figure(results: dict[str, Any], method: str, mib: int, phase: str) -> Summary | None:
    """Median/min/max of one phase; `total` is per run checkpoint + restore."""
    cell = results.get("cr", {}).get(method, {}).get(str(mib))
    if not cell:
        return None
    if phase == "total":
        pairs = zip(cell.get("checkpoint_ms", []), cell.get("restore_ms", []))
        return summarize([c + r for c, r in pairs])
    key = dict(PHASES)[phase]
    return summarize(cell.get(key or "", []))


def sizes(results: dict[str, Any]) -> list[int]:
    return [int(m) for m in results["meta"]["sizes_mib"]]


def ratio_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for mib in sizes(results):
        for phase, _key in PHASES:
            row: dict[str, Any] = {"mib": mib, "phase": phase}
            for num, den in RATIO_PAIRS:
                row[f"{num}/{den}"] = ratio(figure(results, num, mib, phase),
                                            figure(results, den, mib, phase))
            row["a-c_ms"] = overhead_ms(figure(results, "a", mib, phase),
                                        figure(results, "c", mib, phase))
            rows.append(row)
    return rows


def fixed_overhead(results: dict[str, Any], phase: str) -> tuple[float, float] | None:
    """(ms independent of size, ms per GiB) of (a) over (c), fitted over the sizes."""
    xs, ys = [], []
    for mib in sizes(results):
        diff = overhead_ms(figure(results, "a", mib, phase), figure(results, "c", mib, phase))
        if diff is not None:
            xs.append(mib / 1024)
            ys.append(diff)
    return linear_fit(xs, ys)


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, measured, verdict, detail) rows."""
    rows = []
    # the target is at 1 GiB; bigger sizes are judged by the same bound
    large = [m for m in sizes(results) if m >= 1024] or [max(sizes(results))]
    for mib in large:
        for phase, _ in PHASES:
            value = ratio(figure(results, "a", mib, phase), figure(results, "c", mib, phase))
            name = TARGET_AC.name if mib == 1024 else f"(a)/(c) at {_mib(mib)}"
            rows.append((f"{name}, {phase} ≤ {TARGET_AC.limit}", _ratio(value),
                         TARGET_AC.verdict(value), ""))
    for mib in sizes(results):
        for phase, _ in PHASES:
            value = ratio(figure(results, "a", mib, phase), figure(results, "d", mib, phase))
            rows.append((f"{TARGET_AD.name} at {mib} MiB, {phase} ≤ {TARGET_AD.limit}",
                         _ratio(value), TARGET_AD.verdict(value), ""))
    for mib in sizes(results):
        value = overhead_ms(figure(results, "f", mib, "checkpoint"),
                            figure(results, "g", mib, "checkpoint"))
        rows.append((f"{TARGET_FG.name} at {mib} MiB, checkpoint ≤ {TARGET_FG.limit:.0f} ms",
                     "–" if value is None else f"{value:,.0f} ms", TARGET_FG.verdict(value), ""))
    for row in migration_rows(results):
        rows.append((f"{TARGET_PAUSE} at {row['mib']} MiB ≤ dump + size / link + restore + "
                     f"{ALLOWANCE_MS / 1000:.1f} s",
                     f"{row['pause'].median:,.0f} ms (floor {row['floor'].median:,.0f} ms)",
                     "met" if row["pause"].median <= row["floor"].median else "missed", ""))
    for row in migration_rows(results, "postcopy"):
        rows.append((f"{TARGET_POSTCOPY.name} at {row['mib']} MiB ≤ "
                     f"{TARGET_POSTCOPY.limit:.0f} ms",
                     f"{row['pause'].median:,.0f} ms", TARGET_POSTCOPY.verdict(
                         row["pause"].median), ""))
    helptime = results.get("startup", {}).get(HELP_LABEL)
    value = helptime["ttfb_ms"]["median"] if helptime else None
    rows.append((f"{TARGET_HELP.name} ≤ {TARGET_HELP.limit / 1000:.1f} s",
                 "–" if value is None else f"{value / 1000:.3f} s", TARGET_HELP.verdict(value),
                 ""))
    return rows


TARGET_PAUSE = "(m) pause of `migrate --to-node --delete-source`"
TARGET_POSTCOPY = Target("(p) pause of `migrate --lazy`, not growing with memory", 500.0)


def _mib(mib: int) -> str:
    return f"{mib // 1024} GiB" if mib >= 1024 and mib % 1024 == 0 else f"{mib} MiB"


def migration_rows(results: dict[str, Any], kind: str = "migration") -> list[dict[str, Any]]:
    """Per memory size: summaries of the pause, its parts and the floor (per run), of the
    stop-and-copy migrations ("migration") or the post-copy ones ("postcopy")."""
    mig = results.get(kind) or {}
    link = mig.get("link_mb_s")
    rows = []
    for mib, cell in sorted((mig.get("sizes") or {}).items(), key=lambda kv: int(kv[0])):
        runs = list(zip(cell.get("pause_ms", []), cell.get("checkpoint_ms", []),
                        cell.get("restore_ms", []), cell.get("size_bytes", [])))
        if not runs or not link:
            continue
        floors = [floor_ms({"checkpoint_ms": c, "restore_ms": r, "size_bytes": b}, link)
                  for _p, c, r, b in runs]
        pause = summarize([p for p, _c, _r, _b in runs])
        floor = summarize(floors)
        assert pause is not None and floor is not None
        rows.append({"mib": int(mib), "pause": pause, "floor": floor,
                     "checkpoint": summarize(cell.get("checkpoint_ms", [])),
                     "transfer": summarize([t for t in cell.get("transfer_ms", [])
                                            if t is not None]),
                     "restore": summarize(cell.get("restore_ms", [])),
                     "memory": summarize([m for m in cell.get("memory_ms", [])
                                          if m is not None]),
                     "size": summarize(cell.get("size_bytes", [])),
                     "how": sorted(set(cell.get("transfer", []))),
                     "link": link})
    return rows


def render(results: dict[str, Any], plots: list[str]) -> str:
    meta = results["meta"]
    out: list[str] = []
    add = out.append
    add("# Benchmarks: checkpoint and restore, side by side\n")
    add("Generated by `make bench` (bench/); do not edit by hand: the prose that is not generated "
        "comes from `bench/notes.md`. Figures are the **median (min–max) of "
        f"{meta['runs']} runs**, all measured in one run on one machine, in milliseconds "
        "unless stated.\n")
    add(f"- run: {meta['started']} → {meta['finished']} ({meta['duration_s'] / 60:.0f} min), "
        f"bench and helper code at {meta.get('bench_commit', 'see the commit of this file')}")
    machine = meta.get("machine", {})
    add(f"- machine: {machine.get('cpus')} CPUs ({machine.get('cpu_model', '?')}), "
        f"{machine.get('mem_gib', 0):.0f} GiB, kernel {machine.get('kernel')}, "
        f"{machine.get('os')}")
    versions = meta.get("versions", {})
    add("- tools: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    load = meta.get("loadavg_start", []), meta.get("loadavg_end", [])
    add(f"- load average (1/5/15 min) at start {' '.join(map(str, load[0]))}, at end "
        f"{' '.join(map(str, load[1]))}; highest 1-min sample during the run "
        f"{max((s[1] for s in meta.get('loadavg_samples', [])), default=0):.2f}. Other "
        "engineers' end-to-end tests share this 2-core machine and the lab cluster, so single "
        "runs are disturbed; the min column is the least disturbed run.")
    every = sorted({int(m) for m in sizes(results)} | {
        int(m) for kind in ("migration", "postcopy")
        for m in ((results.get(kind) or {}).get("sizes") or {})})
    add(f"- workload: `memhog MIB {meta['interval_ms']}` (hack/images/memhog.c) touching "
        f"{', '.join(_mib(m) for m in every)} of anonymous memory (one written byte per page, "
        "the rest zero), printing a heartbeat every "
        f"{meta['interval_ms']} ms\n")

    add("## Targets\n")
    add("| target | measured | verdict |")
    add("|---|---|---|")
    for name, value, verdict, _detail in targets(results):
        add(f"| {name} | {value} | **{verdict}** |")
    add("")

    add("## Checkpoint and restore\n")
    add("Checkpoint: wall time of the command or request, the container keeps running "
        "(leave-running everywhere). Restore: from starting the restore until the restored "
        "program's first heartbeat is seen (see *Definitions*). Size: what the checkpoint "
        "leaves on disk. Throughput: size / checkpoint time.\n")
    add("| memory | method | checkpoint | restore | restore command returned | size MiB | "
        "checkpoint MB/s |")
    add("|---|---|---|---|---|---|---|")
    for mib in sizes(results):
        for method, label in METHODS.items():
            cell = results.get("cr", {}).get(method, {}).get(str(mib))
            if not cell:
                continue
            size = summarize(cell.get("size_bytes", []))
            ck = figure(results, method, mib, "checkpoint")
            mb_s = throughput_mb_s(size.median if size else None, ck.median if ck else None)
            add(f"| {mib} MiB | {label} | {_cell(ck)} | "
                f"{_cell(figure(results, method, mib, 'restore'))} | "
                f"{_cell(summarize(cell.get('restore_cmd_ms', [])))} | "
                f"{_fmt(size.median / 2**20 if size else None, 1)} | {_fmt(mb_s)} |")
    add("")
    for plot in plots:
        if plot.startswith("cr"):
            add(f"![checkpoint and restore times](benchmarks/{plot})\n")

    add("## Ratios and the overhead of (a) over (c)\n")
    add("Ratios of medians; total = checkpoint + restore of the same run. "
        "(a)−(c) is the difference of medians in ms.\n")
    add("| memory | phase | (a)/(c) | (b)/(c) | (a)/(d) | (a)−(c) ms |")
    add("|---|---|---|---|---|---|")
    for row in ratio_rows(results):
        add(f"| {row['mib']} MiB | {row['phase']} | {_ratio(row['a/c'])} | "
            f"{_ratio(row['b/c'])} | {_ratio(row['a/d'])} | {_fmt(row['a-c_ms'])} |")
    add("")
    for phase, _ in PHASES:
        fit = fixed_overhead(results, phase)
        if fit:
            add(f"- {phase}: fixed overhead of (a) over (c) ≈ **{fit[0]:,.0f} ms** plus "
                f"{fit[1]:,.0f} ms per GiB (least-squares line through the sizes)")
    add("")

    mrows = migration_rows(results)
    if mrows:
        add("## Migration to another node (stop-and-copy)\n")
        add("`kubectl cedana migrate POD --to-node cedana-lab-node2 --delete-source` of a fresh "
            "memhog pod on node 1, as the helpers report it in the Migration's status: the "
            "pause from the freeze of the source to the restored process running, and its "
            "parts. The floor is the issue's: dump + size at the link's measured speed + "
            f"restore + {ALLOWANCE_MS / 1000:.1f} s, per run. Link: one TCP stream from node 1 "
            f"to node 2's address, {mrows[0]['link']:,.0f} MB/s (best of 3, "
            f"{LINK_MIB} MiB).\n")
        add("| memory | pause | checkpoint | transfer | restore | size MiB | floor | how |")
        add("|---|---|---|---|---|---|---|---|")
        for row in mrows:
            size = row["size"]
            add(f"| {row['mib']} MiB | {_cell(row['pause'])} | {_cell(row['checkpoint'])} | "
                f"{_cell(row['transfer'])} | {_cell(row['restore'])} | "
                f"{_fmt(size.median / 2**20 if size else None, 1)} | {_cell(row['floor'])} | "
                f"{', '.join(row['how'])} |")
        add("")
    prows = migration_rows(results, "postcopy")
    if prows:
        add("## Migration to another node, post-copy\n")
        add("`kubectl cedana migrate POD --to-node cedana-lab-node2 --delete-source --lazy` of "
            "the same memhog pods: everything but the memory is dumped, sent and restored "
            "(the pause, from the freeze to the restored process running), then the memory "
            "follows page by page from node 1's helper (memory after: from the restored "
            "process running to the last page; the source stays frozen that long, the "
            "workload runs). memhog reads every page at each beat, so it waits for most of "
            "its memory at its first beat.\n")
        add("| memory | pause | checkpoint | transfer | restore | memory after | size KiB |")
        add("|---|---|---|---|---|---|---|")
        for row in prows:
            size = row["size"]
            add(f"| {row['mib']} MiB | {_cell(row['pause'])} | {_cell(row['checkpoint'])} | "
                f"{_cell(row['transfer'])} | {_cell(row['restore'])} | "
                f"{_cell(row['memory'])} | "
                f"{_fmt(size.median / 2**10 if size else None, 0)} |")
        add("")
    if mrows or prows:
        for plot in plots:
            if plot.startswith("migration"):
                add(f"![migration pause](benchmarks/{plot})\n")

    comp = results.get("compression")
    if comp:
        add("## Compression of a real checkpoint\n")
        add(f"Input: {comp['source']} ({comp['bytes'] / 2**20:.0f} MiB, read from the page "
            "cache), one thread, best of 3. MB/s are of uncompressed bytes; `none` is only "
            "reading the files. memhog's pages are almost all zero, so these ratios are an "
            "upper bound; the random row is the lower bound (incompressible memory).\n")
        add("| input | codec | compress MB/s | decompress MB/s | ratio |")
        add("|---|---|---|---|---|")
        for label, key in (("checkpoint", "checkpoint"), ("random bytes", "random")):
            for codec, row in (comp.get(key) or {}).items():
                add(f"| {label} | {codec} | {_fmt(row['compress_mb_s'])} | "
                    f"{_fmt(row['decompress_mb_s'])} | {_fmt(row['ratio'], 2)} |")
        add("")
        for plot in plots:
            if plot.startswith("compression"):
                add(f"![compression](benchmarks/{plot})\n")

    startup = results.get("startup")
    if startup:
        add("## Start-up\n")
        add("Time to the first byte on stdout and to exit, "
            f"{meta.get('startup_runs', '?')} runs after one warm-up.\n")
        add("| command | first byte | exit |")
        add("|---|---|---|")
        for label, row in startup.items():
            add(f"| `{label}` | {_cell(summarize_dict(row['ttfb_ms']))} | "
                f"{_cell(summarize_dict(row['total_ms']))} |")
        add("")

    mach = results.get("machine")
    if mach:
        add("## The machine's own limits\n")
        write = mach["write"]
        add(f"- sequential write of {write['mib']} MiB in 1 MiB blocks into "
            f"`{write['directory']}` (same filesystem as the checkpoint directories): "
            f"{_cell(summarize_dict(write['page_cache_mb_s']))} MB/s into the page cache, "
            f"{_cell(summarize_dict(write['fsync_mb_s']))} MB/s with fsync")
        add(f"- memory copy (libc memmove, {mach['memcpy']['mib']} MiB): "
            f"{_cell(summarize_dict(mach['memcpy']['mb_s']))} MB/s")
        biggest = max(sizes(results))
        cached = write["page_cache_mb_s"]["median"]
        for method, label in METHODS.items():
            cell = results.get("cr", {}).get(method, {}).get(str(biggest))
            ck = figure(results, method, biggest, "checkpoint")
            size = summarize(cell.get("size_bytes", [])) if cell else None
            mb_s = throughput_mb_s(size.median if size else None, ck.median if ck else None)
            if mb_s:
                add(f"- {label} at {biggest} MiB: checkpoint {mb_s:,.0f} MB/s = "
                    f"{100 * mb_s / cached:.0f}% of the page-cache write speed, "
                    f"{100 * mb_s / mach['memcpy']['mb_s']['median']:.0f}% of memcpy")
        add("")

    add("## Definitions\n")
    add("- **(a) kubectl cedana**: `kubectl cedana checkpoint POD --leave-running -o json`, then "
        "`kubectl cedana restore ID --into PLACEHOLDER -o json`, through the real kubectl and "
        "the API server: each creates a Checkpoint or Restore object that the helper DaemonSet "
        "pod reconciles, and watches it to its end (the helper's defaults: "
        "freeze → dump → rootfs diff → thaw, sha256 manifest, fsync).")
    add("- **(b) helper REST**: the same two requests (`POST /checkpoint`, `POST /restore`) "
        "sent by the benchmark to a helper of this checkout that it runs as a host process "
        "on 127.0.0.1 (`cedana-helper serve --authorization none`, started by "
        "tests/e2e/helper.py as in the tests): the same code as the DaemonSet's image, without "
        "kubectl, the plugin, the API server and the objects.")
    add("- **(e) kubelet checkpoint API**: `kubectl create --raw "
        "/api/v1/nodes/NODE/proxy/checkpoint/NS/POD/main`: the kubelet has containerd dump the "
        "container into an archive; Kubernetes has no restore API, so dump only.")
    add("- **(f) Checkpoint object** and **(g) helper REST, same helper**: the cost of the "
        "resource path. (f) creates a Checkpoint object with the Kubernetes Python client and "
        "watches it (from the create's resourceVersion) until the DaemonSet's helper of this "
        "node reports it Succeeded; (g) sends `POST /checkpoint` to that same helper on the "
        "node's loopback with a ServiceAccount's bearer token (its TokenReview and "
        "SubjectAccessReview included). Same pod, same options (leave running, changed files, "
        "local), interleaved; dump only (each checkpoint is deleted after it is measured, "
        "through its object or `DELETE /checkpoints/ID`). (f)−(g) is what the API server, "
        "admission, the watch and the reconciler add.")
    add("- **(c) bare runc**: an OCI bundle made from the workload image's layers, "
        "`runc run -d`, `runc checkpoint --leave-running --manage-cgroups-mode soft "
        "--ext-unix-sk --file-locks` (link-remap through /etc/criu/runc.conf, as the helper "
        "does), `runc restore -d` into a new container of the same bundle; no manifest, no "
        "hashing, no fsync, no rootfs diff.")
    add("- **(d) podman**: `podman run --runtime runc --network none`, "
        "`podman container checkpoint --leave-running --export FILE --compress none`, "
        "`podman container restore --import FILE --name NEW`. `--compress none` because the "
        "helper does not compress either; podman's default (zstd) would only slow podman.")
    add("- **restore time**: from starting the restore command or request until the benchmark "
        "sees the restored memhog's first heartbeat line (with a good checksum): in the "
        "placeholder's CRI log file for (a) and (b), on the restored container's stdout pipe "
        "for (c), in the new container's conmon log for (d) (above the last heartbeat that "
        "podman's export carried over). Files are polled every 2 ms; memhog beats every "
        f"{meta['interval_ms']} ms, so up to one interval is common to every method. "
        "Placeholder pods are created before the timing starts, as `migrate` does.")
    add("- all methods run interleaved (run 1 of a, b, c, d, then run 2 of b, c, d, a ...) so "
        "load from other users and the previous method's leftovers hit them alike; `sync` "
        "(untimed) before every checkpoint, so no method pays for writing back another's "
        "dirty pages; each checkpoint is deleted after its restore.")
    if meta.get("python_bytecode") == "kept":
        add("- every command runs as in a user's shell: Python writes and reuses the bytecode of "
            "what it imports (`PYTHONDONTWRITEBYTECODE` is removed from the benchmark's "
            "environment; with it, every `kubectl cedana` compiled the plugin's modules "
            "again).")
    add("")

    notes = results.get("notes")
    if notes:
        add(notes.strip() + "\n")
    failures = [(m, mib, f) for m, cells in results.get("cr", {}).items()
                for mib, cell in cells.items() for f in cell.get("failures", [])]
    failures += [(m, mib, f) for m, kind in (("m", "migration"), ("p", "postcopy"))
                 for mib, cell in ((results.get(kind) or {}).get("sizes") or {}).items()
                 for f in cell.get("failures", [])]
    errors = {m: e for m, e in results.get("method_errors", {}).items() if e}
    if failures or errors:
        add("## Failures during this run\n")
        for method, error in errors.items():
            label = {**METHODS, **OTHER_METHODS}.get(method, method)
            add(f"- {label}: could not run: `{_one_line(error)}`")
        for method, mib, failure in failures:
            label = {**METHODS, **OTHER_METHODS}.get(method, method)
            add(f"- {label} at {mib} MiB (retried): `{_one_line(failure)}`")
        add("")
    return "\n".join(out).rstrip() + "\n"


def summarize_dict(data: dict[str, Any] | None) -> Summary | None:
    if not data:
        return None
    return Summary(data["median"], data["min"], data["max"], int(data.get("runs", 0)))


def plot(results: dict[str, Any], outdir: Path) -> list[str]:
    """PNG files written into outdir (names relative to it)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    mibs = sizes(results)
    width = 0.8 / len(METHODS)
    for ax, phase in zip(axes, ("checkpoint", "restore")):
        for i, (method, label) in enumerate(METHODS.items()):
            meds, lows, highs, xs = [], [], [], []
            for j, mib in enumerate(mibs):
                s = figure(results, method, mib, phase)
                if s is None:
                    continue
                xs.append(j + (i - (len(METHODS) - 1) / 2) * width)
                meds.append(s.median / 1000)
                lows.append((s.median - s.low) / 1000)
                highs.append((s.high - s.median) / 1000)
            if xs:
                ax.bar(xs, meds, width, yerr=[lows, highs], capsize=3, label=label)
        ax.set_xticks(range(len(mibs)), [f"{m} MiB" for m in mibs])
        ax.set_ylabel("seconds (median, min–max)")
        ax.set_title("restore (until the first heartbeat)" if phase == "restore" else phase)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(outdir / "cr-times.png", dpi=110)
    plt.close(fig)
    written.append("cr-times.png")

    mrows = migration_rows(results)
    prows = migration_rows(results, "postcopy")
    if mrows or prows:
        fig, ax = plt.subplots(figsize=(7, 3.8))
        xs = sorted({r["mib"] for r in mrows + prows})
        for key, label in (("pause", "pause"), ("floor", "floor (dump + link + restore + "
                                                          "0.3 s)"),
                           ("checkpoint", "dump"), ("transfer", "transfer"),
                           ("restore", "restore")):
            if not mrows:
                break
            ys = [(r[key].median / 1000 if r[key] else float("nan")) for r in mrows]
            ax.plot([r["mib"] for r in mrows], ys, marker="o", label=label,
                    linestyle="--" if key == "floor" else "-")
        for key, label in (("pause", "post-copy pause"), ("memory", "post-copy memory after")):
            ys = [(r[key].median / 1000 if r[key] else float("nan")) for r in prows]
            ax.plot([r["mib"] for r in prows], ys, marker="s", label=label, linestyle=":")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x} MiB" for x in xs])
        ax.set_ylabel("seconds (median)")
        ax.set_title("migration to node 2: pause against memory size")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(outdir / "migration-pause.png", dpi=110)
        plt.close(fig)
        written.append("migration-pause.png")

    comp = results.get("compression")
    if comp and comp.get("checkpoint"):
        fig, ax = plt.subplots(figsize=(7, 3.6))
        names = list(comp["checkpoint"])
        speeds = [comp["checkpoint"][n]["compress_mb_s"] for n in names]
        bars = ax.bar(names, speeds, color="tab:blue")
        for bar, name in zip(bars, names):
            ax.annotate(f"×{comp['checkpoint'][name]['ratio']:.0f}",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("MB/s (uncompressed), one thread")
        ax.set_title("compressing a memhog checkpoint (label: ratio)")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(outdir / "compression.png", dpi=110)
        plt.close(fig)
        written.append("compression.png")
    return written


def _one_line(text: object) -> str:
    """An error as one line of inline code."""
    return " ".join(str(text).split()).replace("`", "'")
