"""mefts_core.measure.fits: budgets parsed with errors naming the field, and every figure of the Fits answer marked
by where it comes from (measured, interpolated, estimated, unknown), with the numbers those sources give."""

from __future__ import annotations

import pytest

from mefts_core.errors import ConfigError
from mefts_core.measure import fits
from mefts_core.measure.estimate import estimate_memory, max_batch_estimate

GiB, MiB = 1 << 30, 1 << 20


@pytest.mark.parametrize("text, size", [("24GiB", 24 * GiB), ("80 GB", 80 * 10**9), ("16", 16 * GiB),
                                        ("512mib", 512 * MiB), ("1.5 TiB", 3 * (1 << 39)), (40, 40 * GiB),
                                        ("48g", 48 * GiB)])
def test_budget_sizes(text, size):
    assert fits.parse_budget(text) == size


@pytest.mark.parametrize("text", ["24XB", "", "GiB", "-4GiB", "0", "12 KiB", "2 PB", None, [24]])
def test_bad_budget_names_the_field_and_value(text):
    with pytest.raises(ConfigError) as e:
        fits.parse_budget(text, "budget")
    assert e.value.loc == ("budget",) and e.value.value == text


def _q(budget=256 * MiB, **kw):
    return fits.Query(budget, "tiny-bert", 64, **kw)


def _row(method, batch, peak, step=None, **kw):
    return {"backbone": "tiny-bert", "method": method, "layers": None, "seq_len": 64, "batch_size": batch,
            "dtype": "float32", "device": "cuda", "status": "ok", "peak_bytes": peak, "step_seconds": step,
            "where": f"row B={batch}", **kw}


def _est_batch(budget, method="lora", **opts):
    return max_batch_estimate("tiny-bert", method, 64, budget, None, opts, dtype="float32", device="cuda")


def test_without_measurements_every_registered_method_is_estimated_and_time_unknown():
    got = fits.fits(_q())
    from mefts_core.methods import METHODS

    assert [m["method"] for m in got["methods"]] == list(METHODS)
    # every built-in has an analytic estimate (prefix, ia3 and lst too): none is "unknown"
    assert {m["method"]: m["max_batch"]["source"] for m in got["methods"]} == dict.fromkeys(METHODS, "estimated")
    lora = {m["method"]: m for m in got["methods"]}["lora"]
    b = _est_batch(256 * MiB)
    assert b > 0 and lora["max_batch"] == {"value": b, "source": "estimated", "how": lora["max_batch"]["how"]}
    peak = estimate_memory("tiny-bert", "lora", b, 64, dtype="float32", device="cuda")["peak_bytes"]
    assert lora["peak_bytes"]["value"] == peak <= 256 * MiB and lora["peak_bytes"]["source"] == "estimated"
    assert lora["step_seconds"]["value"] is None and lora["step_seconds"]["source"] == "unknown"
    assert lora["tokens_per_second"]["value"] is None


def test_interpolated_between_a_measured_fit_and_a_measured_miss():
    budget = 64 * MiB
    rows = [_row("lora", 4, 40 * MiB, 0.1), _row("lora", 16, 88 * MiB, 0.3)]
    lora = fits.fits(_q(budget), rows, ["lora"])["methods"][0]
    # (64 - 40) / (88 - 40) of the way from B=4 to B=16: B = 4 + 12 * 0.5 = 10
    assert lora["max_batch"]["value"] == 10 and lora["max_batch"]["source"] == "interpolated"
    assert "B=4" in lora["max_batch"]["how"] and "B=16" in lora["max_batch"]["how"]
    assert lora["peak_bytes"] == {"value": 64 * MiB, "source": "interpolated", "how": lora["max_batch"]["how"]}
    assert lora["step_seconds"]["value"] == pytest.approx(0.1 + 0.2 * 6 / 12)
    assert lora["step_seconds"]["source"] == "interpolated"
    assert lora["tokens_per_second"]["value"] == pytest.approx(10 * 64 / 0.2)
    assert lora["measured_points"] == 2


def test_an_estimate_is_held_to_the_measured_fits_and_misses():
    budget = 256 * MiB
    b = _est_batch(budget)
    # a measured batch above the estimate fits: the answer is that batch, measured, not the lower estimate
    got = {m["method"]: m for m in fits.fits(_q(budget), [_row("lora", b + 5, budget - MiB)])["methods"]}["lora"]
    assert got["max_batch"]["value"] == b + 5 and got["max_batch"]["source"] == "measured", got["max_batch"]
    assert got["peak_bytes"] == {"value": budget - MiB, "source": "measured", "how": got["peak_bytes"]["how"]}
    # a measured batch at or below the estimate does not fit: the estimate is capped below it
    got = {m["method"]: m for m in fits.fits(_q(budget), [_row("lora", b - 2, budget + MiB)])["methods"]}["lora"]
    assert got["max_batch"]["value"] == b - 3 and got["max_batch"]["source"] == "estimated", got["max_batch"]
    assert f"B={b - 2}" in got["max_batch"]["how"]
    # a family without an analytic estimate (no layer walk for OPT) still reports the batch measured to fit
    opt = fits.Query(budget, "tiny-opt", 64)
    got = fits.fits(opt, [{**_row("lora", 4, budget // 2), "backbone": "tiny-opt"}], ["lora"])["methods"][0]
    assert got["max_batch"]["value"] == 4 and got["max_batch"]["source"] == "measured", got["max_batch"]
    # a miss below a measured fit (rows that disagree) does not cap the estimate under that fit
    got = {m["method"]: m for m in fits.fits(_q(budget), [_row("lora", 2, budget // 2), _row("lora", 1, budget + 1)])[
        "methods"]}["lora"]
    assert got["max_batch"]["value"] == b and got["max_batch"]["source"] == "estimated", got["max_batch"]
    # measured points consistent with the estimate leave it as it is
    got = {m["method"]: m for m in fits.fits(_q(budget), [_row("lora", 1, 1)])["methods"]}["lora"]
    assert got["max_batch"] == {"value": b, "source": "estimated", "how": got["max_batch"]["how"]}


def test_measured_at_the_point_and_a_cuda_search_at_the_budget():
    budget = 64 * MiB
    # another device kind, dtype or sequence length is another point: ignored
    rows = [_row("lora", 10, 1, 9.0, device="cpu"), _row("lora", 10, 1, 9.0, dtype="bfloat16"),
            _row("lora", 10, 1, 9.0, seq_len=128),
            _row("lora", 10, 60 * MiB, 0.25), _row("lora", 11, 66 * MiB),
            # a search at this budget measures the batch; "meft1-exact" is meft1's default label
            {"backbone": "tiny-bert", "method": "meft1-exact", "layers": None, "seq_len": 64, "budget_gib": 1 / 16,
             "max_batch": 7, "how": "cuda search (real OOM); max_seq_len from the fit"},
            _row("meft1-exact", 2, 30 * MiB, 0.05)]
    got = {m["method"]: m for m in fits.fits(_q(budget), rows, ["lora", "meft1"])["methods"]}
    lora, meft = got["lora"], got["meft1"]
    assert lora["max_batch"]["value"] == 10 and lora["max_batch"]["source"] == "measured"
    assert lora["peak_bytes"]["value"] == 60 * MiB and lora["peak_bytes"]["source"] == "measured"
    assert lora["step_seconds"] == {"value": 0.25, "source": "measured", "how": "timed at B=10 (row B=10)"}
    assert meft["max_batch"]["value"] == 7 and meft["max_batch"]["source"] == "measured"
    assert meft["peak_bytes"]["source"] == "estimated"
    # one timed step elsewhere: scaled linearly with the batch, labelled as an estimate naming its point
    assert meft["step_seconds"]["value"] == pytest.approx(0.05 * 7 / 2)
    assert meft["step_seconds"]["source"] == "estimated" and "B=2" in meft["step_seconds"]["how"]


def test_bad_fields_are_config_errors_naming_them():
    for kw, loc in [(dict(seq_len=0), "seq_len"), (dict(dtype="float8"), "dtype"), (dict(device="tpu"), "device")]:
        with pytest.raises(ConfigError) as e:
            fits.Query(GiB, "tiny-bert", **{"seq_len": 64, **kw})
        assert e.value.loc == (loc,)
    with pytest.raises(ConfigError) as e:
        fits.Query(GiB, "no such backbone", 64)
    assert e.value.loc == ("backbone",)
    with pytest.raises(ConfigError) as e:
        fits.fits(_q(), [], ["lora", "nonsense(("])
    assert e.value.loc == ("methods",) and e.value.value == "nonsense(("


def test_table_labels_each_figure():
    text = fits.fits_table(fits.fits(_q(64 * MiB), [_row("lora", 4, 40 * MiB, 0.1), _row("lora", 16, 88 * MiB, 0.3)],
                                     ["lora", "bitfit"]))
    assert "| lora | 10 (interpolated) |" in text and "(estimated)" in text
