"""Makers of real files for tests: small models in every accepted format, datasets, and bad files."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import AsyncIterator

import numpy as np
import torch

from distill import models
from distill.teacher_training import save_model

MLP = {"name": "mlp", "kwargs": {"input_shape": [1, 8, 8], "num_classes": 10, "hidden_sizes": [16]}}


def tiny_mlp(seed: int = 0) -> torch.nn.Module:
    """An untrained mlp for [1, 8, 8] inputs, 10 classes (1,210 parameters)."""
    torch.manual_seed(seed)
    return models.build(MLP["name"], MLP["kwargs"]).eval()


def safetensors_file(d: Path, with_metadata: bool = True, seed: int = 0) -> Path:
    """A tiny mlp as safetensors (with or without the stillhouse architecture metadata); another ``seed`` gives other
    weights of the same size (another content: uploads of one content are one file)."""
    p = d / (("mlp" if with_metadata else "bare") + (f"-{seed}" if seed else "") + ".safetensors")
    if with_metadata:
        save_model(tiny_mlp(seed), MLP, p)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tiny_mlp(seed).state_dict().items()}, str(p))
    return p


def state_dict_file(d: Path, prefix: str = "") -> Path:
    """A tiny mlp's state dict saved with torch.save (zip archive); ``prefix`` e.g. 'module.'."""
    p = d / "mlp.pt"
    torch.save({prefix + k: v for k, v in tiny_mlp().state_dict().items()}, p)
    return p


def torchscript_file(d: Path) -> Path:
    """A tiny mlp as a TorchScript archive."""
    p = d / "mlp.ts"
    torch.jit.script(tiny_mlp()).save(str(p))
    return p


def onnx_file(d: Path) -> Path:
    """A tiny mlp as ONNX with a dynamic batch axis."""
    import warnings

    p = d / "mlp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tiny_mlp(), (torch.zeros(1, 1, 8, 8),), str(p), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return p


def torch_export_file(d: Path, model: torch.nn.Module | None = None, example: torch.Tensor | None = None, *,
                      dynamic_batch: bool = True, name: str = "model.pt2") -> Path:
    """``model`` (default: the tiny mlp) saved with ``torch.export.save`` as a .pt2 archive, its batch dimension dynamic
    (or fixed to ``example``'s batch size)."""
    model = model if model is not None else tiny_mlp()
    example = example if example is not None else torch.zeros(2, 1, 8, 8)
    dims = {"x": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    import inspect

    arg = next(iter(inspect.signature(model.forward).parameters))
    ep = torch.export.export(model.eval(), (example,), dynamic_shapes={arg: dims["x"]} if dims else None)
    p = d / name
    torch.export.save(ep, str(p))
    return p


def shipped_files(d: Path, model: torch.nn.Module, input_shape: list[int]) -> dict[str, Path]:
    """``model`` exported the three ways teams ship models: {'torch_export': .pt2, 'onnx': .onnx (legacy exporter,
    dynamic batch), 'torchscript': .ts (torch.jit.script)}."""
    import warnings

    model = model.eval()
    example = torch.zeros(2, *input_shape)
    out = {"torch_export": torch_export_file(d, model, example, name="shipped.pt2")}
    p = d / "shipped.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example[:1],), str(p), dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    out["onnx"] = p
    p = d / "shipped.ts"
    torch.jit.script(model).save(str(p))
    out["torchscript"] = p
    return out


def npz_file(d: Path, n: int = 40, labels: bool = True, name: str = "data.npz") -> Path:
    """NPZ with X [n, 1, 8, 8] float32 and (optionally) y [n] in 0..9."""
    rng = np.random.default_rng(0)
    p = d / name
    arrays = {"X": rng.random((n, 1, 8, 8), dtype=np.float32)}
    if labels:
        arrays["y"] = np.arange(n) % 10
    np.savez(p, **arrays)
    return p


def csv_file(d: Path, n: int = 30) -> Path:
    """CSV with 64 numeric feature columns and a 'label' column."""
    rng = np.random.default_rng(0)
    p = d / "data.csv"
    header = ",".join([f"f{i}" for i in range(64)] + ["label"])
    rows = [",".join([f"{v:.4f}" for v in rng.random(64)] + [str(i % 10)]) for i in range(n)]
    p.write_text(header + "\n" + "\n".join(rows) + "\n")
    return p


class Boom:
    """A pickle payload that would create a marker file if it were ever unpickled unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def malicious_checkpoint(d: Path, marker: Path) -> Path:
    """A torch.save archive whose pickle runs ``Path.touch(marker)`` when unpickled without weights_only."""
    p = d / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": Boom(marker)}, p)
    return p


def namespace_checkpoint(d: Path) -> Path:
    """A checkpoint holding an argparse.Namespace beside the state dict (a common real-world layout)."""
    import argparse

    p = d / "with_args.pt"
    torch.save({"state_dict": tiny_mlp().state_dict(), "args": argparse.Namespace(lr=0.1)}, p)
    return p


def truncated_safetensors(d: Path) -> Path:
    """A safetensors file cut in half."""
    good = safetensors_file(d)
    p = d / "truncated.safetensors"
    p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return p


def random_bytes(d: Path, n: int = 4096) -> Path:
    """Bytes that are no known format."""
    p = d / "noise.bin"
    p.write_bytes(np.random.default_rng(1).integers(0, 256, n, dtype=np.uint8).tobytes())
    return p


def raw_pickle(d: Path, marker: Path) -> Path:
    """A plain (non-zip) pickle with a code-running payload."""
    p = d / "plain.pkl"
    p.write_bytes(pickle.dumps(Boom(marker)))
    return p


def zip_without_model(d: Path) -> Path:
    """A zip archive that is neither a torch archive nor NPZ."""
    p = d / "notes.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("readme.txt", "hello")
    return p


STREAM_BOUNDARY = "b0undary"
STREAM_CTYPE = f"multipart/form-data; boundary={STREAM_BOUNDARY}"


async def streamed_upload(chunks: int, chunk_bytes: int, pulled: list[int] | None = None,
                          boundary: str = STREAM_BOUNDARY) -> AsyncIterator[bytes]:
    """A multipart upload body (purpose 'teacher', file 'big.bin' of ``chunks`` x ``chunk_bytes`` zero bytes) produced
    chunk by chunk, for chunked or Content-Length-declared streaming; each file chunk the server pulls is appended
    to ``pulled``, so a test can tell how far the server read before answering."""
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nteacher\r\n--{boundary}\r\n"
           f"Content-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n\r\n").encode()
    for i in range(chunks):
        if pulled is not None:
            pulled.append(i)
        yield b"\0" * chunk_bytes
    yield f"\r\n--{boundary}--\r\n".encode()

