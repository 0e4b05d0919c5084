"""Response schemas of ``/v1/files``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Purpose = Literal["teacher", "dataset", "student_init"]


class FileObject(BaseModel):
    """An uploaded file as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: str = Field(..., description="File id, 'file_…'.")
    object: Literal["file"] = Field("file", description="Always 'file'.")
    created_at: datetime = Field(..., description="Upload time, ISO-8601 UTC.")
    purpose: Purpose = Field(..., description="'teacher', 'dataset' or 'student_init'.")
    filename: str = Field(..., description="The client's file name (metadata only; never used as a path).")
    bytes: int = Field(..., description="Size in bytes.")
    sha256: str = Field(..., description="Hex SHA-256 of the content, computed while streaming the upload.")
    format: str = Field(..., description="Detected format: safetensors, torchscript, torch_export, state_dict, onnx, hf, gguf, npz, csv or jsonl.")
    parameters: int | None = Field(None, description="Models: number of parameters.")
    input_shape: list[Any] | None = Field(None, description="Models: per-sample input shape where known (null dims are dynamic).")
    output_shape: list[Any] | None = Field(None, description="Models: per-sample output shape where known.")
    details: dict[str, Any] = Field(default_factory=dict, description="Format-specific facts (datasets: samples, features, labels, classes; models: layers, dynamic_batch, tied, ...).")


class FileDeleted(BaseModel):
    """Answer to a delete."""

    id: str = Field(..., description="The deleted file's id.")
    object: Literal["file"] = Field("file", description="Always 'file'.")
    deleted: bool = Field(True, description="Always true.")
