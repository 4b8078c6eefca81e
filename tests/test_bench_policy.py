"""``malpi bench policy`` on a tiny budget (the default architecture, a few steps): every
(algorithm, runtime) cell is measured, each figure is finite and positive, and every printed
ratio is the quotient of the two medians it compares. The figures themselves are not judged."""

import json
import math
import subprocess
import sys

from extras import needs_tf

from malpi.policy.bench import ALGORITHMS, MEASURED, RUNTIMES, WINDOWS, cpu_info, format_table

CELL_KEYS = {"median_ms", "p99_ms"}


def positive(value) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def close(ratio: float, num: float, den: float) -> bool:
    """``ratio`` is num / den as the report rounds it (two decimals)."""
    return abs(ratio - num / den) <= 0.005 + 1e-9


@needs_tf
def test_bench_policy_smoke(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "malpi", "bench", "policy", "--arch", "default"]
        + ["--steps", "5", "--warmup", "2", "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())

    assert set(report) == {"cpu", "cpu_note", "threads", "steps", "warmup", "architectures"}
    assert report["threads"] == 1 and report["steps"] == 5 and report["warmup"] == 2
    assert set(report["cpu"]) == {"model", "machine", "int8_dot_product"}
    assert list(report["architectures"]) == ["default"]
    r = report["architectures"]["default"]
    assert set(r) == {
        "params",
        "macs_per_step",
        "weight_bytes",
        "model_bytes",
        "latency",
        "step_litert_float_after_2000_steps_median_ms",
        "seed_way_keras_predict",
        "ratios",
    }
    for key in ("params", "macs_per_step", "weight_bytes"):
        assert positive(r[key]), key
    assert set(r["model_bytes"]) == {"litert_float", "litert_dynamic", "litert_int8"}
    assert all(positive(v) for v in r["model_bytes"].values())
    assert positive(r["step_litert_float_after_2000_steps_median_ms"])

    # Every cell measured, and only those; each figure finite and positive, median <= p99.
    lat = r["latency"]
    assert set(lat) == set(ALGORITHMS)
    assert set(lat["step"]) == set(RUNTIMES)
    cells = [(f"{a}/{x}", lat[a][x]) for a in ALGORITHMS for x in MEASURED[a]]
    cells.append(("seed_way", r["seed_way_keras_predict"]))
    for where, cell in cells:
        assert set(cell) == CELL_KEYS, where
        assert positive(cell["median_ms"]) and positive(cell["p99_ms"]), (where, cell)
        assert cell["median_ms"] <= cell["p99_ms"], (where, cell)
    for a in ALGORITHMS:
        assert set(lat[a]) == set(MEASURED[a]), a

    # The ratios, recomputed from the medians: each compares cells that differ in one thing.
    med = {a: {x: c["median_ms"] for x, c in cells.items()} for a, cells in lat.items()}
    ratios = r["ratios"]
    for t in WINDOWS:
        alg = ratios[f"algorithmic_window_t{t}_over_step"]
        assert set(alg) == {"litert_float", "litert_dynamic", "tf_function"}
        for x, v in alg.items():
            assert close(v, med[f"window_t{t}"][x], med["step"][x]), (t, x)
    runtime = ratios["runtime_tf_over_litert_float"]
    assert set(runtime) == set(ALGORITHMS)
    for a, v in runtime.items():
        assert close(v, med[a]["tf_function"], med[a]["litert_float"]), a
    dyn = ratios["quantisation_float_over_dynamic"]
    assert set(dyn) == set(ALGORITHMS)
    for a, v in dyn.items():
        assert close(v, med[a]["litert_float"], med[a]["litert_dynamic"]), a
    integer = ratios["quantisation_float_over_integer"]
    assert set(integer) == {"step"}
    assert close(integer["step"], med["step"]["litert_float"], med["step"]["litert_int8"])
    assert close(
        ratios["seed_way_over_tf_function_step"],
        r["seed_way_keras_predict"]["median_ms"],
        med["step"]["tf_function"],
    )
    assert all(
        positive(v)
        for group in ratios.values()
        for v in (group.values() if isinstance(group, dict) else [group])
    )

    # The table labels the seed's way and says the int8 result depends on the CPU.
    assert format_table(report) in done.stdout
    assert "seed's way (Keras predict per step)" in done.stdout
    assert "depends on the CPU" in done.stdout and "depends on the CPU" in report["cpu_note"]


def test_cpu_info_reads_dot_product_flags():
    x86 = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu avx2 avx512_vnni\n"
    assert cpu_info(x86)["model"] == "Intel(R) Xeon(R)"
    assert cpu_info(x86)["int8_dot_product"] == ["avx512_vnni"]
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp\n\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n"
    assert cpu_info(arm)["model"] == "Raspberry Pi 5 Model B Rev 1.0"
    assert cpu_info(arm)["int8_dot_product"] == ["asimddp"]
    assert cpu_info("model name\t: AMD EPYC\nflags\t\t: avx2\n")["int8_dot_product"] == []
