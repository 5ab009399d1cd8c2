"""`mefts bench`: memory and speed of every method over a grid of backbone × method × layers × seq_len × batch.

    grid.py    method labels (`parse_method`), `BenchCase`, `BenchGrid`, the presets
    runner.py  models and batches for a grid point, timed steps, `run_case` / `run_bench`, the estimate columns
    rows.py    the row columns (`COLUMNS`), row files (md/csv/json) and the summary table
    budget.py  fits in budget: measured points, the GPU batch search, the fit, `fits_in_budget`, `fits_table`

The command line is `mefts bench` / `python -m mefts_core.cli bench` (mefts_core/cli/bench.py). Library use, e.g.
from the service (mefts_core imports neither db nor backend; the sink is how rows leave):

    from mefts_core.measure.bench import BenchGrid, run_bench
    rows = run_bench(BenchGrid(backbones=["bert-base"], methods=["lora", "meft1-exact"], layers=[12]), sink=store_row)
"""

from mefts_core.measure.bench.budget import (
    FITS_COLUMNS,
    fit_from_measurements,
    fits_in_budget,
    fits_table,
    measure_points,
    search_max_batch,
)
from mefts_core.measure.bench.grid import (
    CURVE_METHODS,
    DTYPES,
    PRESETS,
    STANDARD_METHODS,
    BenchCase,
    BenchGrid,
    grid_from_preset,
    parse_method,
)
from mefts_core.measure.bench.rows import (
    COLUMNS,
    ROW_FORMATS,
    GiB,
    MiB,
    Row,
    Sink,
    format_rows,
    load_rows,
    parse_rows,
    summary_table,
)
from mefts_core.measure.bench.runner import (
    build_model,
    device_name,
    extend_positions,
    known_backbone,
    make_batch,
    reestimate,
    run_bench,
    run_case,
    timed_steps,
)

__all__ = [
    "COLUMNS", "CURVE_METHODS", "ROW_FORMATS", "DTYPES", "FITS_COLUMNS", "PRESETS", "STANDARD_METHODS", "BenchCase", "BenchGrid",
    "GiB", "MiB", "Row", "Sink", "build_model", "device_name", "extend_positions", "fit_from_measurements",
    "fits_in_budget", "fits_table", "format_rows", "grid_from_preset", "known_backbone", "load_rows", "make_batch",
    "measure_points", "parse_method", "parse_rows", "reestimate", "run_bench", "run_case", "search_max_batch",
    "summary_table", "timed_steps",
]
