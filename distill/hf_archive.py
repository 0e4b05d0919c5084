"""Hugging Face model folders uploaded as one archive (format name ``hf``).

A user zips (or tars and gzips) the folder that ``save_pretrained`` wrote — ``config.json``, weights
(``model.safetensors``, sharded safetensors with ``model.safetensors.index.json``, or ``pytorch_model.bin``)
and tokenizer files, optionally sentence-transformers' ``modules.json`` and ``1_Pooling/config.json`` —
and uploads the archive. The folder may sit at the archive's root or inside exactly one top-level folder.

Safety: archives are untrusted. ``safe_extract`` checks every member *before* writing anything (no
absolute paths, ``..``, drive letters, backslashes, links, devices, FIFOs; member count and declared
unpacked size bounded), writes the files itself while counting bytes (zip bombs lie about sizes), and
removes everything it wrote when it refuses. ``.bin`` weights are only ever read with
``torch.load(weights_only=True)``; remote code is never trusted; nothing is fetched from the network
(``local_files_only=True`` everywhere).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

from .errors import DistillError, first_line
from .checkpoints import file_bytes_text, state_dict_from_object, torch_load_weights_only
from .lm.models import is_causal_lm

ZIP_MAGIC = b"PK\x03\x04"
GZIP_MAGIC = b"\x1f\x8b"
MARKER_NAME = ".stillhouse-extracted.json"
MAX_LISTED_FILES = 50
TOKENIZER_FILES = (
    "tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
    "tokenizer.model", "source.spm", "vocab.model", "bpe.codes",
)
_CHUNK = 1024 * 1024


def _invalid(msg: str) -> DistillError:
    return DistillError("invalid_file", msg, "file")


# ------------------------------------------------------------------------------------ member names


def _member_parts(name: str) -> tuple[str, ...] | None:
    """Validated path components of an archive member name; None for the archive root itself ('./').

    Raises ``invalid_file`` for absolute names, drive letters, backslashes, NUL bytes and '..' components.
    """
    shown = name[:200]
    if not name:
        raise _invalid("refused archive: a member has an empty name")
    if "\x00" in name:
        raise _invalid(f"refused archive: member {shown!r} has a NUL byte in its name")
    if "\\" in name:
        raise _invalid(f"refused archive: member {shown!r} contains a backslash; member names must use '/'")
    if name.startswith("/"):
        raise _invalid(f"refused archive: member {shown!r} has an absolute path")
    if re.match(r"^[A-Za-z]:", name):
        raise _invalid(f"refused archive: member {shown!r} starts with a drive letter")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _invalid(f"refused archive: member {shown!r} contains '..' (it would be written outside the folder)")
    return parts or None


def _top_folder(paths: list[tuple[str, ...]]) -> str | None:
    """The single top-level folder all ``paths`` live in, or None when they do not share one."""
    tops = {p[0] for p in paths}
    if len(tops) != 1:
        return None
    top = next(iter(tops))
    return top if all(len(p) > 1 or p == (top,) for p in paths) and any(len(p) > 1 for p in paths) else None


def _model_root(files: list[tuple[str, ...]], dirs: list[tuple[str, ...]]) -> tuple[str, ...] | None:
    """Where ``config.json`` is: () for the root, (top,) for the single top-level folder, None if neither."""
    if ("config.json",) in files:
        return ()
    top = _top_folder(files + dirs)
    if top is not None and (top, "config.json") in files:
        return (top,)
    return None


# --------------------------------------------------------------------------------------- listing


class _Member:
    """One archive member after validation: ``parts`` (path components), ``kind`` ('file' | 'dir'),
    declared ``size`` in bytes, and the archive's own handle ``ref`` (ZipInfo or TarInfo)."""

    __slots__ = ("parts", "kind", "size", "ref")

    def __init__(self, parts: tuple[str, ...], kind: str, size: int, ref: Any) -> None:
        self.parts, self.kind, self.size, self.ref = parts, kind, size, ref


def _archive_kind(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(GZIP_MAGIC):
        return "tar"
    return None


def _zip_members(z: zipfile.ZipFile, max_members: int) -> list[_Member]:
    infos = z.infolist()
    if len(infos) > max_members:
        raise _invalid(f"refused archive: it has {len(infos)} members, at most {max_members} are accepted")
    out = []
    for info in infos:
        parts = _member_parts(info.filename)
        mode = info.external_attr >> 16
        ftype = stat.S_IFMT(mode)
        if ftype == stat.S_IFLNK:
            raise _invalid(f"refused archive: member {info.filename[:200]!r} is a symbolic link; links are not accepted")
        if ftype in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            raise _invalid(f"refused archive: member {info.filename[:200]!r} is a device, FIFO or socket")
        if info.flag_bits & 0x1:
            raise _invalid(f"refused archive: member {info.filename[:200]!r} is encrypted")
        if parts is None:
            continue
        if info.is_dir() or ftype == stat.S_IFDIR:
            out.append(_Member(parts, "dir", 0, info))
        else:
            out.append(_Member(parts, "file", int(info.file_size), info))
    return out


def _tar_members(t: tarfile.TarFile, max_members: int, max_unpacked_bytes: int) -> list[_Member]:
    out = []
    count = 0
    declared = 0
    for info in t:  # streams through the archive; stops early when there are too many members or bytes
        count += 1
        if count > max_members:
            raise _invalid(f"refused archive: it has more than {max_members} members")
        name = info.name
        parts = _member_parts(name)
        if info.issym() or info.islnk():
            kind = "symbolic" if info.issym() else "hard"
            raise _invalid(f"refused archive: member {name[:200]!r} is a {kind} link; links are not accepted")
        if info.ischr() or info.isblk() or info.isfifo() or info.isdev():
            raise _invalid(f"refused archive: member {name[:200]!r} is a device or FIFO")
        if not (info.isreg() or info.isdir()):
            raise _invalid(f"refused archive: member {name[:200]!r} has an unsupported type ({info.type!r})")
        size = int(info.size) if info.isreg() else 0
        declared += size
        if declared > max_unpacked_bytes:  # before reading on: skipping a member's data means inflating it

            raise _invalid(
                f"refused archive: it unpacks to more than the limit of {file_bytes_text(max_unpacked_bytes)}"
            )
        if parts is None:
            continue
        out.append(_Member(parts, "dir" if info.isdir() else "file", size, info))
    return out


@contextlib.contextmanager
def _open_archive(path: Path) -> Iterator[tuple[str, Any]]:
    kind = _archive_kind(path)
    if kind == "zip":
        try:
            z = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise _invalid(f"corrupt zip archive ({e})") from None
        with z:
            yield kind, z
    elif kind == "tar":
        try:
            t = tarfile.open(path, mode="r:gz")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise _invalid(f"not a readable .tar.gz archive ({e})") from None
        with t:
            yield kind, t
    else:
        raise _invalid("not a .zip or .tar.gz archive")


def _list_members(kind: str, archive: Any, max_members: int, max_unpacked_bytes: int) -> list[_Member]:
    try:
        if kind == "zip":
            return _zip_members(archive, max_members)
        return _tar_members(archive, max_members, max_unpacked_bytes)
    except DistillError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, ValueError) as e:
        raise _invalid(f"corrupt archive ({type(e).__name__}: {e})") from None


def is_hf_archive(path: str | Path, *, max_scan_bytes: int = 4 * 1024**3) -> bool:
    """True when ``path`` is a .zip (starts with ``PK\\x03\\x04``) or a gzip-compressed tar (starts with
    ``1f 8b``) whose members include ``config.json`` at the root or inside its single top-level folder.

    Only reads the zip directory or the tar headers; never writes anything. A tar is read up to its
    ``config.json`` at the root, else to its end (decompressing the .tar.gz once) — but once members
    totalling more than ``max_scan_bytes`` have been passed without a decision the answer is True, so
    that ``safe_extract`` refuses the archive by its size limit instead of the scan inflating a gzip bomb.
    Corrupt or unsafe archives that show a ``config.json`` answer True too, for ``safe_extract`` to refuse
    with a precise message; unreadable ones answer False. OSError if ``path`` cannot be opened.
    """
    path = Path(path)
    kind = _archive_kind(path)
    if kind is None:
        return False
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        else:
            with tarfile.open(path, mode="r:gz") as t:
                names = []
                scanned = 0
                for info in t:
                    names.append(info.name + ("/" if info.isdir() else ""))
                    if tuple(p for p in info.name.split("/") if p not in ("", ".")) == ("config.json",):
                        return True
                    scanned += int(info.size) if info.isreg() else 0
                    if scanned > max_scan_bytes:
                        return True
                    if len(names) > 100_000:
                        break
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, ValueError):
        return False
    files, dirs = [], []
    for n in names:
        parts = tuple(p for p in n.replace("\\", "/").split("/") if p not in ("", "."))
        if not parts:
            continue
        (dirs if n.endswith("/") else files).append(parts)
    return _model_root(files, dirs) is not None


# ------------------------------------------------------------------------------------- extraction


def _clear(dest: Path, created_dest: bool) -> None:
    """Remove everything under ``dest`` (and ``dest`` itself when this call created it)."""
    if not dest.exists():
        return
    if created_dest:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                child.unlink()


def _copy_limited(src: Any, target: Path, declared: int, budget: list[int], name: str) -> None:
    """Stream ``src`` into a new file ``target``, refusing more than ``declared`` bytes or the remaining
    total ``budget[0]``."""
    written = 0
    with open(target, "xb") as out:  # exclusive: never follows or overwrites an existing path
        while True:
            chunk = src.read(_CHUNK)
            if not chunk:
                break
            written += len(chunk)
            if written > declared:
                raise _invalid(f"refused archive: member {name!r} unpacks to more than its declared {declared} bytes")
            if written > budget[0]:
                raise _invalid("refused archive: unpacked data exceeds the size limit while extracting")
            out.write(chunk)
    budget[0] -= written


def safe_extract(path: str | Path, dest: Path, *, max_unpacked_bytes: int, max_members: int = 10_000) -> Path:
    """Extract a .zip or .tar.gz model archive into ``dest`` and return the model folder.

    ``dest`` must be absent or an empty directory; it is created when absent. The model folder is ``dest``
    itself when ``config.json`` is at the archive root, else ``dest/<top>`` for the archive's single
    top-level folder. ``max_unpacked_bytes``: limit on the total of the files' sizes, checked against the
    declared sizes before anything is written *and* while writing. ``max_members``: limit on entries.

    Every member is checked before the first byte is written: absolute names, drive letters, backslashes,
    '..' components, symbolic and hard links, devices/FIFOs/sockets, encrypted zip entries, duplicate names,
    too many members, too much declared data. Tar members are also passed through ``tarfile.data_filter``.
    Files are written by this function (mode 0o644 after umask, never the archive's modes) with exclusive
    creation under ``dest`` only.

    Raises ``DistillError('invalid_file')`` with a message naming the offending member for any refusal, a
    corrupt archive, or no ``config.json`` at the root or in one top-level folder; on any failure everything
    this call wrote is removed (``dest`` too when this call created it). ``ValueError`` when ``dest`` exists
    and is not an empty directory.
    """
    path = Path(path)
    dest = Path(dest)
    if max_unpacked_bytes < 0 or max_members < 1:
        raise ValueError("max_unpacked_bytes must be >= 0 and max_members >= 1")
    created_dest = not dest.exists()
    if not created_dest and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"extraction folder {dest} must be absent or an empty directory")
    with _open_archive(path) as (kind, archive):
        members = _list_members(kind, archive, max_members, max_unpacked_bytes)
        seen: set[tuple[str, ...]] = set()
        total = 0
        for m in members:
            if m.kind == "file":
                if m.parts in seen:
                    raise _invalid(f"refused archive: member {'/'.join(m.parts)!r} appears more than once")
                seen.add(m.parts)
                total += m.size
            if kind == "tar" and hasattr(tarfile, "data_filter"):
                try:
                    tarfile.data_filter(m.ref, str(dest))
                except tarfile.FilterError as e:
                    raise _invalid(f"refused archive: member {m.ref.name[:200]!r} is not plain data ({e})") from None
        if total > max_unpacked_bytes:

            raise _invalid(
                f"refused archive: it unpacks to {file_bytes_text(total)}, more than the limit of "
                f"{file_bytes_text(max_unpacked_bytes)}"
            )
        files = [m.parts for m in members if m.kind == "file"]
        dirs = [m.parts for m in members if m.kind == "dir"]
        for parts in dirs:  # a file and a folder of the same name cannot both exist
            if parts in seen:
                raise _invalid(f"refused archive: {'/'.join(parts)!r} is both a file and a folder")
        root = _model_root(files, dirs)
        if root is None:
            raise _invalid(
                "the archive has no config.json at its root or inside a single top-level folder; "
                "expected the folder written by save_pretrained (config.json, weights, tokenizer files)"
            )
        dest.mkdir(parents=True, exist_ok=True)
        base = dest.resolve()
        budget = [max_unpacked_bytes]
        name = ""
        try:
            for m in members:
                target = base.joinpath(*m.parts)
                if os.path.commonpath([str(base), str(target)]) != str(base):  # belt and braces
                    raise _invalid(f"refused archive: member {'/'.join(m.parts)!r} would be written outside the folder")
                if m.kind == "dir":
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                name = "/".join(m.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                if kind == "zip":
                    with archive.open(m.ref) as src:
                        _copy_limited(src, target, m.size, budget, name)
                else:
                    src = archive.extractfile(m.ref)
                    if src is None:
                        raise _invalid(f"refused archive: member {name!r} has no data")
                    with src:
                        _copy_limited(src, target, m.size, budget, name)
        except DistillError:
            _clear(dest, created_dest)
            raise
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, ValueError, RuntimeError) as e:
            _clear(dest, created_dest)
            raise _invalid(
                f"refused archive: member {name[:200]!r} is corrupt or does not match its declared size "
                f"({type(e).__name__}: {str(e)[:300]})"
            ) from None
        except BaseException:
            _clear(dest, created_dest)
            raise
    return dest.joinpath(*root)


def load_hf_archive(path: str | Path, dest: str | Path, *, max_unpacked_bytes: int) -> Path:
    """Extract an ``hf`` archive for a job and return the model folder (``dest`` or ``dest/<top>``).

    When ``dest`` already holds a complete extraction of the same archive (a marker file in ``dest``
    recording the archive's name, size in bytes and mtime in ns), it is reused without reading the archive.
    Otherwise the archive is extracted with ``safe_extract`` into a fresh sibling folder, the marker is
    written, and that folder atomically replaces ``dest`` (a stale ``dest`` is removed first); a concurrent
    extraction of the same archive into the same ``dest`` is tolerated. ``dest``'s parent is created.

    Raises ``DistillError('invalid_file')`` as ``safe_extract`` does (nothing is left behind on refusal).
    """
    path = Path(path)
    dest = Path(dest)
    st = path.stat()
    key = {"archive": path.name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}

    def reuse() -> Path | None:
        try:
            marker = json.loads((dest / MARKER_NAME).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(marker, dict) or {k: marker.get(k) for k in key} != key:
            return None
        rel = marker.get("folder")
        if not isinstance(rel, str) or (rel and (not re.fullmatch(r"[^/\\]+", rel) or rel in (".", ".."))):
            return None
        folder = dest / rel if rel else dest
        return folder if (folder / "config.json").is_file() and not folder.is_symlink() else None

    found = reuse()
    if found is not None:
        return found
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        folder = safe_extract(path, staging, max_unpacked_bytes=max_unpacked_bytes)
        rel = "" if folder == staging else folder.name
        tmp_marker = staging / (MARKER_NAME + ".tmp")
        tmp_marker.write_text(json.dumps({**key, "folder": rel}))
        os.replace(tmp_marker, staging / MARKER_NAME)
        if dest.exists() or dest.is_symlink():
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            else:
                dest.unlink()
        try:
            os.rename(staging, dest)
        except OSError:  # another process finished first
            found = reuse()
            if found is None:
                raise
            shutil.rmtree(staging, ignore_errors=True)
            return found
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest / rel if rel else dest


# -------------------------------------------------------------------------------------- inspection


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars for the duration (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _weight_files(folder: Path) -> tuple[str, list[Path]]:
    """('safetensors' | 'bin', files) of the weights transformers will load, checking sharded indexes."""
    for fmt, single, index in (("safetensors", "model.safetensors", "model.safetensors.index.json"),
                               ("bin", "pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).is_file():
            return fmt, [folder / single]
        if (folder / index).is_file():
            try:
                weight_map = json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise _invalid(f"{index} is not a valid shard index ({type(e).__name__}: {e})") from None
            paths = []
            for shard in shards:
                if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard in (".", ".."):
                    raise _invalid(f"{index} names an invalid shard file {shard!r}")
                if not (folder / shard).is_file():
                    raise _invalid(f"{index} lists the shard {shard!r}, which is not in the archive")
                paths.append(folder / shard)
            if not paths:
                raise _invalid(f"{index} lists no shard files")
            return fmt, paths
    raise _invalid(
        "no model weights: expected model.safetensors (or sharded safetensors with model.safetensors.index.json) "
        "or pytorch_model.bin next to config.json"
    )


def _sentence_transformers(folder: Path) -> dict[str, Any] | None:
    """{'pooling': 'mean'|'cls'|'max', 'normalize': bool} from modules.json / 1_Pooling, else None."""
    modules: list[dict[str, Any]] = []
    if (folder / "modules.json").is_file():
        try:
            modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
            if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
                raise ValueError("expected a list of objects")
        except (OSError, ValueError) as e:
            raise _invalid(f"modules.json is not valid sentence-transformers metadata ({e})") from None

    def kind(m: dict[str, Any]) -> str:
        return str(m.get("type", "")).rsplit(".", 1)[-1]

    pooling_dir = next((str(m.get("path", "")) for m in modules if kind(m) == "Pooling"), None)
    if pooling_dir is None and (folder / "1_Pooling" / "config.json").is_file():
        pooling_dir = "1_Pooling"
    if pooling_dir is None:
        if modules:
            raise _invalid("modules.json has no Pooling module; only Transformer + Pooling (+ Normalize) pipelines are supported")
        return None
    parts = _member_parts(pooling_dir) or ()
    cfg_path = folder.joinpath(*parts, "config.json")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        if not isinstance(cfg, dict):
            raise ValueError("expected a JSON object")
    except (OSError, ValueError) as e:
        raise _invalid(f"the sentence-transformers pooling config {pooling_dir}/config.json is missing or invalid ({e})") from None
    if "pooling_mode" in cfg:
        modes = cfg["pooling_mode"] if isinstance(cfg["pooling_mode"], list) else [cfg["pooling_mode"]]
    else:
        legacy = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
                  "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                  "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
        modes = [mode for k, mode in legacy.items() if cfg.get(k)]
    if len(modes) != 1 or modes[0] not in ("mean", "cls", "max"):
        raise _invalid(f"unsupported sentence-transformers pooling {modes!r}; supported: exactly one of mean, cls, max")
    return {"pooling": modes[0], "normalize": any(kind(m) == "Normalize" for m in modules)}


def _folder_files(folder: Path) -> tuple[list[str], int]:
    files, total = [], 0
    for root, _dirs, names in os.walk(folder):
        for n in names:
            p = Path(root) / n
            if n == MARKER_NAME or p.is_symlink():
                continue
            files.append(p.relative_to(folder).as_posix())
            total += p.stat().st_size
    return sorted(files), total


def inspect_hf_folder(folder: str | Path) -> dict[str, Any]:
    """Validate an extracted Hugging Face model folder by loading it; return JSON-serialisable details.

    Loads ``AutoConfig``, the weights with ``AutoModelForSequenceClassification`` (when
    ``config.architectures`` names a ``*ForSequenceClassification``), ``AutoModelForCausalLM`` (when it names a
    causal-LM class, ``distill.lm.models.is_causal_lm``) or ``AutoModel``, and ``AutoTokenizer``,
    all with ``local_files_only=True`` and ``trust_remote_code=False``. ``pytorch_model*.bin`` files are first
    read with ``torch.load(weights_only=True)`` (and transformers is told ``weights_only=True`` too).

    Returns ``{model_type, architectures, parameters (int, scalar count of model.parameters()), vocab_size,
    hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, max_position_embeddings,
    task ('sequence_classification' | 'causal_lm' | 'feature_extraction'), num_labels, id2label ({str(id): name};
    both only with a head), tie_word_embeddings and chat_template (bool; both only for causal LMs), tokenizer {class, vocab_size (= len(tokenizer)), model_max_length (int or None)},
    sentence_transformers ({pooling: 'mean'|'cls'|'max', normalize: bool} or None), weights
    ('safetensors' | 'bin'), unpacked_bytes (total size of the folder's files), files (sorted relative
    paths, at most 50), files_total}``.

    Raises ``DistillError('invalid_file')`` for: no/invalid config.json, no weights, weights that do not
    match the config (missing, unexpected or shape-mismatched tensors, the first few named), no tokenizer
    files or an unloadable tokenizer, a tokenizer larger than the embedding, unsupported sentence-transformers
    pooling. ``DistillError('unsafe_checkpoint')`` for a ``.bin`` that wants to construct arbitrary objects
    (nothing of it runs).
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise _invalid("no config.json in the model folder; expected the folder written by save_pretrained")
    try:
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise _invalid(f"config.json is not valid JSON ({e})") from None
    weights, weight_paths = _weight_files(folder)
    if weights == "bin":

        for p in weight_paths:  # refuses unsafe pickles before transformers sees them
            state_dict_from_object(torch_load_weights_only(p))
    if not any((folder / n).is_file() for n in TOKENIZER_FILES):
        raise _invalid(
            "no tokenizer files next to config.json; expected tokenizer.json, vocab.txt, vocab.json or a "
            "sentencepiece model (save the tokenizer with tokenizer.save_pretrained into the same folder)"
        )
    st_details = _sentence_transformers(folder)

    import transformers

    with _quiet_transformers():
        try:
            config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        except Exception as e:  # noqa: BLE001 - ValueError/OSError/KeyError for unknown or broken configs
            raise _invalid(f"config.json cannot be loaded by transformers: {first_line(e)}") from None
        archs = [a for a in (getattr(config, "architectures", None) or []) if isinstance(a, str)]
        head = any(a.endswith("ForSequenceClassification") for a in archs)
        causal = not head and is_causal_lm(archs)  # a decoder with its LM head: loaded whole, for causal-LM jobs
        auto = (transformers.AutoModelForSequenceClassification if head else
                transformers.AutoModelForCausalLM if causal else transformers.AutoModel)
        kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False, "output_loading_info": True,
                                  "ignore_mismatched_sizes": True, "weights_only": True,
                                  "use_safetensors": weights == "safetensors"}
        try:
            model, info = auto.from_pretrained(folder, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise _invalid(f"the weights cannot be loaded into {auto.__name__} for this config: {first_line(e)}") from None
        problems = []
        for what, keys in (("missing", info.get("missing_keys")), ("unexpected", info.get("unexpected_keys")),
                           ("shape-mismatched", info.get("mismatched_keys"))):
            keys = sorted(keys or [], key=str)
            if keys:
                shown = []
                for k in keys[:4]:
                    if isinstance(k, tuple) and len(k) == 3:
                        shown.append(f"{k[0]} (checkpoint {list(k[1])} vs config {list(k[2])})")
                    else:
                        shown.append(str(k))
                more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
                problems.append(f"{len(keys)} {what} tensor(s): {', '.join(shown)}{more}")
        if info.get("error_msgs"):
            problems.append(f"errors: {'; '.join(str(m) for m in list(info['error_msgs'])[:3])}")
        if problems:
            raise _invalid("the weights do not match config.json: " + "; ".join(problems))
        parameters = int(sum(p.numel() for p in model.parameters()))
        del model
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        except Exception as e:  # noqa: BLE001
            raise _invalid(f"the tokenizer cannot be loaded: {first_line(e)}") from None

    def attr(name: str) -> Any:
        value = getattr(config, name, None)
        return value if isinstance(value, (int, float, str)) or value is None else str(value)

    vocab = attr("vocab_size")
    if isinstance(vocab, int) and len(tokenizer) > vocab:
        raise _invalid(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary (vocab_size) is only {vocab}")
    max_len = getattr(tokenizer, "model_max_length", None)
    files, unpacked = _folder_files(folder)
    details: dict[str, Any] = {
        "model_type": attr("model_type"),
        "architectures": archs,
        "parameters": parameters,
        "vocab_size": vocab,
        "hidden_size": attr("hidden_size"),
        "num_hidden_layers": attr("num_hidden_layers"),
        "num_attention_heads": attr("num_attention_heads"),
        "intermediate_size": attr("intermediate_size"),
        "max_position_embeddings": attr("max_position_embeddings"),
        "task": "sequence_classification" if head else "causal_lm" if causal else "feature_extraction",
    }
    if causal:
        details["tie_word_embeddings"] = bool(getattr(config, "tie_word_embeddings", False))
        details["chat_template"] = bool(getattr(tokenizer, "chat_template", None))
    if head:
        details["num_labels"] = int(config.num_labels)
        details["id2label"] = {str(k): str(v) for k, v in sorted((config.id2label or {}).items())}
    details["tokenizer"] = {
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "model_max_length": int(max_len) if isinstance(max_len, int) and max_len < 10**9 else None,
    }
    details["sentence_transformers"] = st_details
    details["weights"] = weights
    details["unpacked_bytes"] = unpacked
    details["files"] = files[:MAX_LISTED_FILES]
    details["files_total"] = len(files)
    return details


__all__ = ["MARKER_NAME", "inspect_hf_folder", "is_hf_archive", "load_hf_archive", "safe_extract"]
