"""Business logic of uploaded files: validate and store an upload, list, read, delete."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth.limits import check_storage, lock_tenant
from app.errors import Conflict, NotFound, ServiceUnavailable, Unprocessable
from app.files.schemas import Purpose
from app.files.upload import ReceivedUpload, safe_filename
from stillhouse.jobs.states import LIVE
from stillhouse.models import File, Job, JobFile, new_id
from app.pagination import newest_first
from stillhouse.settings import get_settings
from stillhouse.storage import ArtifactStore, StoreError
from app import model_checks
from distill.errors import DistillError

log = logging.getLogger("stillhouse.files")

PURPOSES: tuple[str, ...] = ("teacher", "dataset", "student_init")


def check_purpose(value: str | None) -> Purpose:
    """The ``purpose`` form field, validated. Raises Unprocessable (422) when missing or unknown."""
    if value not in PURPOSES:
        raise Unprocessable(f"'purpose' must be one of {', '.join(PURPOSES)}; got {value!r}", param="purpose")
    return value  # type: ignore[return-value]


def inspect_upload(path: Path, purpose: str) -> dict:
    """Sniff and validate a stored upload (runs torch/onnx/numpy loaders; call in a thread).

    Hugging Face archives are unpacked into a temporary folder (at most ``STILLHOUSE_MAX_UNPACKED_BYTES``) and loaded offline. Returns the columns for ``File`` (format, parameters, shapes,
    details). Raises Unprocessable (422)
    with code ``unsafe_checkpoint`` or ``invalid_file`` and a message saying what was expected.
    """
    try:
        info = model_checks.inspect_upload(path, purpose, max_unpacked_bytes=get_settings().max_unpacked_bytes)
    except DistillError as e:
        raise Unprocessable(e.message, param="file", code=e.code) from e
    return {"format": info.format, "parameters": info.parameters, "input_shape": info.input_shape,
            "output_shape": info.output_shape, "details": info.details}


def find_same(session: Session, tenant_id: str, sha256: str, purpose: str) -> File | None:
    """The tenant's oldest file with this content (sha256 hex) and purpose, or None."""
    return session.scalars(select(File).where(File.tenant_id == tenant_id, File.sha256 == sha256, File.purpose == purpose)
                           .order_by(File.created_at, File.id).limit(1)).first()


def existing_upload(session: Session, tenant_id: str, sha256: str, purpose: str) -> File | None:
    """The tenant's file with the content of an upload just received (same sha256 and purpose), read without a lock
    before the upload is inspected (an inspection loads the model), or None. Ends the read transaction."""
    row = find_same(session, tenant_id, sha256, purpose)
    session.rollback()
    return row


def store_file(session: Session, store: ArtifactStore, received: ReceivedUpload, purpose: str, meta: dict,
               tenant_id: str) -> tuple[File, bool]:
    """Move the validated temp file into the store under a server-generated key and commit its row, owned by
    ``tenant_id``.

    Returns (row, created): when the tenant already has a file of the same content (sha256) and purpose, that file
    is returned with ``created`` False and nothing new is kept. That decision and the storage quota are taken under
    the tenant's lock, so concurrent uploads of one content make one file and concurrent uploads cannot pass the
    quota together.

    The bytes are published first (a rename in a local store; a multipart upload to object storage, which may take a
    while and so is done before any lock is taken). Raises PayloadTooLarge (413 ``storage_quota_exceeded``),
    ServiceUnavailable (503 ``storage_unavailable``: the object store refused or could not be reached). On any
    failure, and for a duplicate, the published bytes are removed again, so no orphan is left.
    The client's filename is kept only as metadata, already reduced by ``upload.safe_filename`` (base name,
    no control characters, at most 255 characters).
    """
    file_id = new_id("file")
    key = store.file_key(file_id)
    filename = safe_filename(received.filename)  # idempotent; guards callers that build ReceivedUpload themselves
    try:
        store.publish(received.path, key)
    except StoreError as e:
        log.error("upload %s: %s", file_id, e)
        raise ServiceUnavailable(f"the artifact store could not take the upload: {e}", code="storage_unavailable") from e
    row = File(id=file_id, tenant_id=tenant_id, purpose=purpose, filename=filename, bytes=received.bytes, sha256=received.sha256,
               storage_key=key, **meta)
    try:
        tenant = lock_tenant(session, tenant_id)
        same = find_same(session, tenant_id, received.sha256, purpose)
        if same is not None:
            session.commit()  # releases the lock
            store.delete(key)
            return same, False
        check_storage(session, tenant, get_settings(), received.bytes)
        session.add(row)
        session.commit()
    except BaseException:
        session.rollback()
        store.delete(key)
        raise
    return row, True


def get_file(session: Session, file_id: str, tenant_id: str) -> File:
    """The file row, if it belongs to ``tenant_id``. Raises NotFound (404) alike for unknown ids and other tenants' files."""
    row = session.get(File, file_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound(f"no file {file_id!r}", param="file_id")
    return row


def list_files(session: Session, tenant_id: str, *, limit: int, after: str | None, purpose: str | None,
               sha256: str | None = None) -> tuple[list[File], bool]:
    """The tenant's files newest first, ``limit`` at most, starting after file ``after``, optionally of one purpose and
    content (``sha256`` hex, lower case); returns (rows, has_more). Raises NotFound (404) when ``after`` is not
    one of the tenant's files."""
    q = select(File).where(File.tenant_id == tenant_id)
    if purpose:
        q = q.where(File.purpose == purpose)
    if sha256:
        q = q.where(File.sha256 == sha256.lower())
    anchor = session.get(File, after) if after else None
    if anchor is not None and anchor.tenant_id != tenant_id:
        anchor = None
    if after and anchor is None:
        raise NotFound(f"after: no file {after!r} to continue from", param="after")
    return newest_first(session, q, File, limit=limit, anchor=anchor)


def delete_file(session: Session, store: ArtifactStore, file_id: str, tenant_id: str) -> None:
    """Delete one of the tenant's files and its bytes. Raises NotFound (404), or Conflict (409) while a queued or
    running job uses it."""
    row = get_file(session, file_id, tenant_id)
    live = session.scalars(
        select(Job.id).join(JobFile, JobFile.job_id == Job.id).where(JobFile.file_id == file_id, Job.status.in_(LIVE)).limit(1)
    ).first()
    if live:
        raise Conflict(f"file {file_id} is used by live job {live}; cancel it or wait until it ends", param="file_id",
                       code="file_in_use")
    session.query(JobFile).filter(JobFile.file_id == file_id).delete(synchronize_session=False)
    session.delete(row)
    try:
        session.commit()
    except IntegrityError as e:  # a job referring to it was created meanwhile
        session.rollback()
        raise Conflict(f"file {file_id} was just put to use by a new job; try again once it ends", param="file_id",
                       code="file_in_use") from e
    try:
        store.delete(row.storage_key)
    except StoreError as e:  # the row is gone; the bytes are an orphan for the operator to remove
        log.error("file %s deleted but its bytes could not be removed from the store: %s", file_id, e)


def list_layers(session: Session, store: ArtifactStore, file_id: str, tenant_id: str, input_shape: list[int] | None) -> list[dict]:
    """The layers of an uploaded model that feature methods may read, with their per-sample output shapes, for choosing
    feature-distillation layers (e.g. ``features.3``): module paths of safetensors (with stillhouse metadata) and
    torch.export models, a TorchScript model's chain, an ONNX graph's module paths and values
    (``Teacher.list_layers``). Runs one forward pass of zeros ``[1, *input_shape]`` on the CPU; ``input_shape``
    defaults to the one known from the file.

    Raises NotFound (404); Unprocessable (422): a dataset, a Hugging Face model (``features_unavailable``),
    a weights-only file without architecture metadata, an unknown input shape, or one the model cannot take.
    """
    row = get_file(session, file_id, tenant_id)
    if row.purpose == "dataset":
        raise Unprocessable(f"file {file_id} is a dataset; layers exist for models", param="file_id")
    if row.format == "hf":
        raise Unprocessable(f"Hugging Face models are matched by transformer layer index (0..{(row.details or {}).get('num_hidden_layers', '?')} - 1) "
                            "in embedding.hidden_layers / attention_layers", param="file_id", code="features_unavailable")
    arch = (row.details or {}).get("architecture")
    if row.format in ("safetensors", "state_dict") and not arch:
        raise Unprocessable(f"file {file_id} holds weights only and no architecture metadata; its layers are those of the "
                            "registry architecture you pair it with", param="file_id")
    shape = input_shape or ((arch or {}).get("kwargs") or {}).get("input_shape")
    if shape is None and row.input_shape and all(isinstance(d, int) for d in row.input_shape[1:]):
        shape = row.input_shape[1:]
    if not shape:
        raise Unprocessable("the model's input shape is not known; pass ?input_shape=1,28,28", param="input_shape")
    try:
        path = store.local_path(row.storage_key, sha256=row.sha256)
    except (FileNotFoundError, StoreError) as e:
        raise ServiceUnavailable(f"the bytes of file {file_id} cannot be read from the artifact store: {e}", code="storage_unavailable") from e
    try:
        return model_checks.model_layers(path, row.format, arch, list(shape))
    except DistillError as e:
        raise Unprocessable(e.message, param="input_shape" if e.code == "shape_mismatch" else "file_id", code=e.code) from e
