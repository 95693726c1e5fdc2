"""`kdflow bench` on tiny models: it measures what it claims and writes it (JSON per section, one Markdown page);
medians are medians of the repeated runs and ratios divide those medians. Speeds are not asserted."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

import kdflow.bench.common as common
from kdflow.bench.common import interleaved, no_native_bf16, repeated
from kdflow.bench.harness import BenchError, BenchSettings, run_bench, trl_available

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench(tmp_path_factory, tiny_llama):
    """Every section once on the tiny LLaMA teacher, with a fake finished experiment for the rule times."""
    root = tmp_path_factory.mktemp("bench")
    rules = root / "results" / "benchmarks"
    (rules / "distill_stage2" / "kd").mkdir(parents=True)
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    (rules / "distill_stage2" / "kd" / "sentiment.tsv").write_text(
        header + "12.5\t0:00:12\t900.1\t1\t1\t1\t0\t0\t1\t1\n"
    )
    (rules / "evaluate").mkdir()
    (rules / "evaluate" / "m.tsv").write_text(header + "3.0\t0:00:03\t-\t1\t1\t1\t0\t0\t1\t1\n")
    settings = BenchSettings(
        teacher=tiny_llama,
        results=root / "results",
        out=root / "out",
        repeats=1,  # one fresh process per figure: the median over repeats is tested on its own below
        steps=2,
        batch_size=2,
        block_size=32,
        blocks=4,
        documents=30,
        layers=1,
        ks=(4,),
        threads=1,
        loss_chunk=16,
        memory_positions=40,
    )
    return settings, run_bench(settings)


def test_every_section_writes_json_and_markdown(bench):
    settings, reports = bench
    for section in ("stage1", "memory", "cache", "caching", "scaling", "rules"):
        on_disk = json.loads((settings.out / f"{section}.json").read_text())
        assert on_disk["machine"]["cpus"] >= 1 and on_disk["settings"]["repeats"] == 1
    md = (settings.out / "bench.md").read_text()
    for title in (
        "Stage-1 distillation speed",
        "word loss memory",
        "Cache size and fidelity",
        "Caching throughput",
        "scaling",
        "Rule wall times",
    ):
        assert title in md


def test_stage1_medians_and_ratios_come_from_the_runs(bench):
    _, reports = bench
    r = reports["stage1"]
    rows = [name for name in r if name.startswith(("kdflow_", "student_only"))]
    assert len(rows) == 9
    skipped = {name for name in r if "skipped" in r[name]} - {n for n in r if n.startswith("trl_")}
    # the bf16 row needs native bf16 (an emulated bf16 matrix product is ~80x slower than fp32 on AVX2)
    assert skipped == ({"kdflow_online_fused_bf16"} if no_native_bf16() else set())
    rows = [name for name in rows if name not in skipped]
    for name in rows:
        runs = r[name]["runs"]
        assert len(runs) == 1 and all(run["steps"] == 2 and run["tokens_per_second"] > 0 for run in runs)
        assert r[name]["tokens_per_second"] == statistics.median(run["tokens_per_second"] for run in runs)
        assert r[name]["peak_rss_mb"] > 100
    rate = {name: r[name]["tokens_per_second"] for name in rows}
    p1 = "P1 cached (best top-k row) / student alone (best row)"
    assert r["ratios"][p1] == pytest.approx(
        max(rate["kdflow_cached_topk"], rate["kdflow_cached_topk_fused"])
        / max(rate["student_only"], rate["student_only_fused"])
    )
    assert r["goals"][p1] == [">=", 0.9]
    online = max(rate["kdflow_online"], rate["kdflow_online_fused"])
    if trl_available():  # each P2 pair at equal precision and compile setting
        trl = {name: r[name]["tokens_per_second"] for name in r if name.startswith("trl_") and "skipped" not in r[name]}
        assert len(trl) == (2 if no_native_bf16() else 3) and min(trl.values()) > 0
        pairs = {
            "P2 online (best uncompiled fp32 row) / TRL fp32": online / trl["trl_gkd_offpolicy"],
            "P2 online fp32 compiled / TRL fp32 compiled": rate["kdflow_online_fused_compiled"]
            / trl["trl_gkd_offpolicy_compiled"],
        }
        if not no_native_bf16():
            pairs["P2 online bf16 / TRL bf16"] = rate["kdflow_online_fused_bf16"] / trl["trl_gkd_offpolicy_bf16"]
        assert {k for k in r["ratios"] if k.startswith("P2")} == set(pairs)
        for key, value in pairs.items():
            assert r["ratios"][key] == pytest.approx(value) and r["goals"][key] == [">=", 1.2]
    else:
        assert "trl is not installed" in r["trl_gkd_offpolicy"]["skipped"]


def test_memory_section_compares_the_fused_and_unfused_word_loss(bench):
    settings, reports = bench
    r = reports["memory"]
    assert r["fused"]["positions"] == r["unfused"]["positions"] == 40
    key = "P3 fused / unfused peak memory of the loss"
    assert r["ratios"][key] == pytest.approx(r["fused"]["peak_loss_mb"] / r["unfused"]["peak_loss_mb"])
    assert r["agreement"]["loss_relative_difference"] < 1e-5
    assert max(r["agreement"]["grad_relative_differences"]) < 1e-4
    assert "met" in (settings.out / "bench.md").read_text()


def test_cache_section_measures_bytes_and_kl_errors(bench):
    settings, reports = bench
    r, md = reports["cache"], (settings.out / "bench.md").read_text()
    # k entries of bf16 value + uint16 id, plus one fp32 log-normaliser per temperature (1 and 15), plus the
    # shard files' headers (a few hundred bytes over this tiny sample)
    assert 4 * 4 + 2 * 4 <= r["bytes_per_token"]["topk_k4"]["bytes_per_token"] < 1.5 * (4 * 4 + 2 * 4)
    assert r["bytes_per_token"]["dense_fp32"]["bytes_per_token"] == 4 * 49152
    for temp in ("T=1", "T=15"):
        q = r["kl"]["k4"][temp]
        assert q["positions"] > 0 and q["dense_kl"] >= 0 and q["reconstruction_kl"] >= 0
        assert q["kdflow_topk_kl"] <= q["dense_kl"] * 1.0001 + 1e-9  # the tail bucket can only merge mass
    # hidden caches of the 32-wide tiny teacher: 32 bf16 values; 32 int8 + 1 fp16 scale; 16 bytes + 1 scale
    for dtype, size in (("bf16", 64), ("int8", 34), ("int4", 18)):
        h = r["hidden"][dtype]
        assert size <= h["bytes_per_token"] < 1.5 * size
        assert all(q["positions"] > 0 and 0 <= q["relative_error"] < 0.5 for q in h["kl"].values())
    assert r["hidden"]["int8"]["goal_met"] == all(
        q["relative_error"] < 0.01 for q in r["hidden"]["int8"]["kl"].values()
    )
    assert r["hidden"]["int4"]["goal_met"] and "hidden int4: goal <= 300 bytes/token: met" in md


def test_caching_scaling_and_rules(bench):
    settings, reports = bench
    c = reports["caching"]
    assert c["caching"]["topk 10x"]["blocks"] == 10 * c["caching"]["topk 1x"]["blocks"]
    for mode, goal in (("topk", 0.9), ("hidden", 1.0)):
        name = f"P4 {mode} caching throughput / bare forward"
        seconds = statistics.median(run["seconds"] for run in c["caching"][f"{mode} 1x"]["runs"])
        assert c["ratios"][name] == pytest.approx(c["bare_forward"]["seconds"] / seconds)
        assert c["goals"][name] == [">=", goal]
        assert name in (settings.out / "bench.md").read_text()
    s = reports["scaling"]
    assert (s["double_length"]["block_size"], s["double_batch"]["batch_size"]) == (64, 4)
    rules = {(j["rule"], j["job"]): j for j in reports["rules"]["jobs"]}
    assert rules[("distill_stage2", "kd/sentiment")]["seconds"] == 12.5
    assert rules[("distill_stage2", "kd/sentiment")]["max_rss_mb"] == pytest.approx(900.1)
    assert rules[("evaluate", "m")]["max_rss_mb"] is None and reports["rules"]["total_seconds"] == 15.5


def test_a_timed_figure_is_the_median_of_its_fresh_runs(monkeypatch):
    results = iter(
        [{"seconds": 3.0, "positions": 8}, {"seconds": 1.0, "positions": 8}, {"seconds": 2.5, "positions": 8}]
    )
    calls = []
    monkeypatch.setattr(common, "run_child", lambda workload, args, threads: calls.append(workload) or next(results))
    got = repeated("forward", {}, BenchSettings(repeats=3, threads=1))
    assert calls == ["forward"] * 3 and got["seconds"] == 2.5 and got["positions"] == 8
    assert [run["seconds"] for run in got["runs"]] == [3.0, 1.0, 2.5]


def test_unknown_section_is_refused(tmp_path):
    with pytest.raises(BenchError, match="unknown benchmark section"):
        run_bench(BenchSettings(sections=("speed",), out=Path(tmp_path)))


def test_rows_of_a_section_run_round_robin(monkeypatch):
    """Every row's r-th fresh process runs before any row's (r + 1)-th: a drift of the machine's speed reaches
    both sides of a ratio; each row keeps the median of its own runs."""
    seconds = iter([1.0, 10.0, 3.0, 30.0, 2.0, 20.0])
    calls = []

    def child(workload, args, threads):
        calls.append(args["row"])
        return {"seconds": next(seconds)}

    monkeypatch.setattr(common, "run_child", child)
    got = interleaved({"a": ("forward", {"row": "a"}), "b": ("cache", {"row": "b"})}, BenchSettings(repeats=3))
    assert calls == ["a", "b"] * 3
    assert got["a"]["seconds"] == 2.0 and got["b"]["seconds"] == 20.0
