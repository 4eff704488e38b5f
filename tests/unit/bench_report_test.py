"""The benchmark's pure parts: statistics, ratios, targets, heartbeat parsing, the report."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report
from bench.procs import BenchError, heartbeat_in, last_beat
from bench.stats import Target, linear_fit, ratio, summarize, throughput_mb_s


def test_summary_is_median_min_max_and_ignores_missing_runs() -> None:
    s = summarize([300, 100, 200, None, 1000])  # type: ignore[list-item]
    assert s is not None and (s.median, s.low, s.high, s.runs) == (250.0, 100.0, 1000.0, 4)
    assert summarize([]) is None


def test_ratio_overhead_throughput_and_fit() -> None:
    assert ratio(summarize([3, 3, 3]), summarize([2, 2, 2])) == 1.5
    assert ratio(summarize([1]), None) is None and ratio(summarize([1]), summarize([0])) is None
    assert throughput_mb_s(2_000_000, 1000) == 2.0
    intercept, slope = linear_fit([0.0625, 0.25, 1.0], [310, 340, 460])  # type: ignore[misc]
    assert intercept == pytest.approx(300, abs=1) and slope == pytest.approx(160, abs=1)
    assert linear_fit([1, 1], [2, 3]) is None


def test_target_verdicts() -> None:
    target = Target("x", 1.15)
    assert [target.verdict(v) for v in (1.0, 1.15, 1.2, None)] == \
        ["met", "met", "missed", "not measured"]


def test_heartbeats_count_only_above_the_old_log_and_check_the_sum() -> None:
    old = b"memhog mib=64 beat=7 sum=1 ok=1\nmemhog mib=64 beat=8 sum=1 ok=1\n"
    assert last_beat(old) == 8 and last_beat(b"nothing") == -1
    assert not heartbeat_in(old, after_beat=8)
    assert heartbeat_in(old + b"2024 stdout F memhog mib=64 beat=9 sum=1 ok=1\n", after_beat=8)
    with pytest.raises(BenchError, match="checksum"):
        heartbeat_in(b"memhog mib=64 beat=9 sum=1 ok=0\n")


def _results() -> dict:
    def cell(ck: list[float], rs: list[float]) -> dict:
        return {"checkpoint_ms": ck, "restore_ms": rs, "restore_cmd_ms": rs,
                "size_bytes": [2**30] * len(ck), "failures": []}
    return {
        "meta": {"started": "s", "finished": "f", "duration_s": 600, "runs": 3,
                 "sizes_mib": [64, 1024], "interval_ms": 10, "loadavg_start": [0.1, 0, 0],
                 "loadavg_end": [0.2, 0, 0], "loadavg_samples": [[10, 1.5]],
                 "machine": {"cpus": 2}, "versions": {"runc": "1.1.5"}},
        "cr": {"a": {"64": cell([600] * 3, [500] * 3), "1024": cell([1100] * 3, [2000] * 3)},
               "c": {"64": cell([200] * 3, [200] * 3), "1024": cell([1000] * 3, [1600] * 3)},
               "d": {"1024": cell([2000] * 3, [3000] * 3)}},
        "method_errors": {"b": "helper gone"},
        "startup": {report.HELP_LABEL: {"ttfb_ms": {"median": 120, "min": 110, "max": 130,
                                                    "runs": 20},
                                        "total_ms": {"median": 140, "min": 130, "max": 150,
                                                     "runs": 20}}},
    }


def test_targets_rows_give_the_ratios_at_1_gib_and_against_podman() -> None:
    rows = {name: (value, verdict) for name, value, verdict, _ in report.targets(_results())}
    assert rows["(a)/(c) at 1 GiB, checkpoint ≤ 1.15"] == ("1.10", "met")
    assert rows["(a)/(c) at 1 GiB, restore ≤ 1.15"] == ("1.25", "missed")
    assert rows["(a)/(d) at 1024 MiB, total ≤ 0.67"] == ("0.62", "met")
    assert rows["(a)/(d) at 64 MiB, checkpoint ≤ 0.67"] == ("–", "not measured")
    assert rows["`kubectl cedana --help` first byte ≤ 0.3 s"] == ("0.120 s", "met")


def test_render_has_every_section_and_names_failures() -> None:
    text = report.render(_results(), ["cr-times.png"])
    assert "| 1024 MiB | (a) kubectl cedana | 1,100 (1,100–1,100) |" in text
    assert "| 64 MiB | checkpoint | 3.00 | – | – | 400 |" in text
    assert "fixed overhead of (a) over (c) ≈ **" in text
    assert "![checkpoint and restore times](benchmarks/cr-times.png)" in text
    assert "(b) helper REST: could not run: `helper gone`" in text
    assert "| `kubectl cedana --help` | 120 (110–130) | 140 (130–150) |" in text


def test_a_migrations_pause_is_judged_against_its_floor_per_run() -> None:
    results = _results()
    # link 1000 MB/s: 1 GB takes 1000 ms; floor = dump + 1000 + restore + 300, per run
    results["migration"] = {"link_mb_s": 1000.0, "sizes": {
        "1024": {"pause_ms": [2100, 2300, 2150], "checkpoint_ms": [500, 600, 550],
                 "transfer_ms": [900, 950, 1000], "restore_ms": [400, 400, 400],
                 "size_bytes": [10**9] * 3, "transfer": ["direct"] * 3, "failures": []},
        "64": {"pause_ms": [900, 950, 1000], "checkpoint_ms": [100] * 3,
               "transfer_ms": [60] * 3, "restore_ms": [100] * 3,
               "size_bytes": [64 * 10**6] * 3, "transfer": ["registry"] * 3,
               "failures": ["BenchError: once"]}}}
    rows = report.migration_rows(results)
    assert [r["mib"] for r in rows] == [64, 1024]
    assert rows[1]["floor"].median == 550 + 1000 + 400 + 300 and rows[1]["pause"].median == 2150
    assert rows[0]["floor"].median == 100 + 64 + 100 + 300 and rows[0]["how"] == ["registry"]
    verdicts = {name: verdict for name, _value, verdict, _ in report.targets(results)
                if name.startswith(report.TARGET_PAUSE)}
    assert list(verdicts.values()) == ["missed", "met"]  # 64 MiB: 950 > 564; 1 GiB: 2150 ≤ 2250



def run_bench(args: list[str], work: Path) -> subprocess.CompletedProcess[str]:
    # were a run to start by mistake, it would find no method to run and write only in work
    env = {**os.environ, "BENCH_WORK": str(work), "BENCH_OUT": str(work),
           "BENCH_METHODS": "none", "BENCH_SIZES": "64"}
    return subprocess.run([sys.executable, "-m", "bench", *args], check=False,
                          capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["help"]])
def test_help_is_answered_without_starting_a_run(args: list[str], tmp_path: Path) -> None:
    done = run_bench(args, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "BENCH_RUNS" in done.stdout and "bench: runs=" not in done.stdout + done.stderr


def test_unknown_arguments_are_refused_without_starting_a_run(tmp_path: Path) -> None:
    done = run_bench(["--sizes", "64"], tmp_path)
    assert done.returncode == 2
    assert "unknown arguments '--sizes 64'" in done.stderr
    assert "bench: runs=" not in done.stdout + done.stderr
