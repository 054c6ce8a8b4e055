"""Where the cpu step's time goes, measured inside real steps (bench/step_breakdown.py); bench/report.py prints the
table from this benchmark's extra_info. The smoke run (benchmarks disabled) measures 5 steps, one round."""
import pytest

from step_breakdown import GROUP, measure, table


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("backend", ["cpu", "cpu-bf16"])
def test_step_breakdown(benchmark, backend):
    from fastvae.backends import amx
    if backend == "cpu-bf16" and amx.engine_unavailable_reason() is not None:
        pytest.skip(f"no bf16 products here: {amx.engine_unavailable_reason()}")
    steps, rounds = (5, 1) if benchmark.disabled else (400, 3)
    found = {}

    def run():
        found.update(measure(steps, rounds, backend))
    benchmark.pedantic(run, rounds=1, iterations=1)
    ms = found["ms"]
    assert all(v >= 0 for k, v in ms.items() if k != "shard Python between the kernels"), ms
    # the phases are inside the step; one shard's products are inside its kernels
    assert ms["phase shards"] + ms["phase update"] <= 1.05 * ms["step"]
    assert "| step ÷ products alone |" in table(found)
    # the floor: the products halved, Adam alone and one shard's passes, each measured (how it compares with the
    # step is what the benchmark reports, not something a test may assert on a shared machine)
    floors = [k for k in ms if k.startswith("floor: ")]
    assert any(k.startswith("floor: products") for k in floors) and any(k.startswith("floor: Adam") for k in floors)
    assert (backend == "cpu-bf16") == any("packs" in k for k in floors)
    assert 0 < found["floor"] < float("inf"), found["floor"]
    assert "| step ÷ that floor |" in table(found)
    benchmark.extra_info.update(breakdown=found)
