"""benchmarks/layer_cuts.py: the cuts it names are the layers kdflow's students keep (``bottom:N`` = the first
N-1 and the last), each cut is trained on the same seeded batches (a rerun gives the same figures), a cut
starts from the teacher's weights whatever the steps, and a bad cut stops before any training."""

from __future__ import annotations

import math

import pytest
from conftest import _tiny, load_benchmark

from kdflow.students import select_layers

pytestmark = pytest.mark.slow


def _bench():
    return load_benchmark("layer_cuts")


def test_cut_names_are_kdflow_layer_selections():
    bench = _bench()
    assert bench.parse_cut("bottom:4", 30) == [0, 1, 2, 29]
    assert (
        bench.parse_cut("uniform:6", 30)
        == select_layers(30, {"strategy": "uniform", "count": 6})
        == [
            0,
            6,
            12,
            17,
            23,
            29,
        ]
    )
    assert bench.parse_cut("first:3", 30) == [0, 1, 2]
    assert bench.parse_cut("0,5,29", 30) == [0, 5, 29]
    for bad in ("middle:4", "bottom:31"):
        with pytest.raises(SystemExit, match=f"cut {bad}"):
            bench.parse_cut(bad, 30)


def test_cuts_train_on_the_same_batches(tmp_path_factory, sentiment_task):
    model4 = _tiny(
        tmp_path_factory,
        "llama4b",
        "llama",
        "embedded:smollm2-135m-instruct",
        num_key_value_heads=1,
        num_hidden_layers=4,
    )
    bench = _bench()
    args = [
        "--task",
        str(sentiment_task),
        "--steps",
        "6",
        "--lr",
        "1e-2",
        "--dev",
        "8",
        "--cuts",
        "bottom:3",
        "uniform:2",
    ]
    first = bench.main(["--model", str(model4), *args])
    again = bench.main(["--model", str(model4), *args])
    assert [r["layers"] for r in first] == [[0, 1, 3], [0, 3]]
    for a, b in zip(first, again, strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    for row in first:
        assert 0 <= row["accuracy_after"] <= 1 and 0.5 <= row["top_class_after"] <= 1
        assert math.isfinite(row["train_loss_last16"])
    untrained = bench.main(["--model", str(model4), *args[:2], "--steps", "0", "--dev", "8", "--cuts", "bottom:3"])[0]
    assert untrained["accuracy_before"] == first[0]["accuracy_before"]
    assert math.isnan(untrained["train_loss_last16"])
    with pytest.raises(SystemExit, match="cut bottom:9: layers.count 9 must be in 1..4"):
        bench.main(["--model", str(model4), *args[:-2], "bottom:3", "bottom:9"])
