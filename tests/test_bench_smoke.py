"""A few seconds of the benchmark harness, so that it keeps working; no timing is asserted."""

import json

import pytest

from bench.run import main


@pytest.mark.integration
def test_benchmark_smoke_run_writes_results(tmp_path):
    out = tmp_path / "smoke.json"
    main(["--smoke", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["maximum"]["completed"]
    assert results["maximum"]["transactions"] == 2000
    assert results["prototype_loop"]["transactions"] == 2000
    assert results["pipelined_loop"]["transactions"] == 10000
    assert results["fixed_rate"][0]["latency_ms_p99"] >= results["fixed_rate"][0]["latency_ms_p50"]
