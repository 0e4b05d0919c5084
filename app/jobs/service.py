"""Business logic of jobs: create (validate references, commit, then enqueue), read, list, cancel,
and the read side of events, metrics, report and artifacts."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from pydantic_core import to_json
from sqlalchemy import Row, bindparam, func, select
from sqlalchemy import delete as sa_delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from app import model_checks
from app.auth.limits import check_job_slot, lock_tenant
from stillhouse.db import get_engine
from app.errors import Conflict, InternalError, NotFound, ServiceUnavailable, Unprocessable
from stillhouse.jobs import states
from app.jobs.schemas import JobObject
from stillhouse.models import Artifact, File, Job, JobEvent, JobFile, Metric, new_id, utcnow
from app.pagination import newest_first, oldest_first
from stillhouse.jobs.queue import enqueue_job, mark_sent, queue_for
from stillhouse.jobs import workers
from stillhouse.settings import get_settings
from stillhouse.storage import ArtifactStore, StoreError
from stillhouse.sweeps.scheduler import job_finished
from distill.errors import DistillError
from distill.report import AnyReport, parse_report
from distill.spec import LM_METHODS, METHOD_PARAMS, NO_EMBEDDING_BASELINE, JobSpec, lm_method_defaults

log = logging.getLogger("stillhouse.jobs")

_WEIGHTS_ONLY = ("safetensors", "state_dict")


def _check_file(session: Session, file_id: str, role: str, purpose: str, tenant_id: str) -> File:
    row = session.get(File, file_id)
    param = f"{role}.file_id"
    if row is None or row.tenant_id != tenant_id:  # another tenant's file is as unknown as a missing one
        raise Unprocessable(f"{param}: no file {file_id!r}; upload it first (POST /v1/files)", param=param, code="file_not_found")
    if row.purpose != purpose:
        raise Unprocessable(f"{param}: file {file_id} has purpose {row.purpose!r}, expected {purpose!r}", param=param,
                            code="wrong_file_purpose")
    return row


BUILTIN_SHAPES = {"digits": [1, 8, 8], "mnist5k": [1, 28, 28]}
BUILTIN_CLASSES = {"digits": 10, "mnist5k": 10}


def _known_shapes(files: dict[str, File], spec: JobSpec) -> tuple[list[int] | None, int | None]:
    """Best guess, before the worker runs anything, of the per-sample input shape and the teacher's class count (the
    teacher may be missing from ``files`` in a dry run, before it is uploaded)."""
    teacher = files.get("teacher")
    arch = ((teacher.details or {}).get("architecture") or {}) if teacher is not None else {}
    shape = (arch.get("kwargs") or {}).get("input_shape")
    if shape is None and teacher is not None and teacher.input_shape and all(isinstance(d, int) for d in teacher.input_shape[1:]):
        shape = teacher.input_shape[1:]
    if shape is None:
        shape = spec.data.input_shape or BUILTIN_SHAPES.get(spec.data.train.builtin or "")
    if shape is None and "data.train" in files:
        shape = (files["data.train"].details or {}).get("feature_shape")
    k = (arch.get("kwargs") or {}).get("num_classes")
    if k is None and teacher is not None and teacher.output_shape and isinstance(teacher.output_shape[-1], int):
        k = teacher.output_shape[-1]
    return shape, k


def _check_architecture(prefix: str, name: str, kwargs: dict, files: dict[str, File], spec: JobSpec) -> None:
    """Refuse unknown argument names and out-of-range values now (422) rather than in a failed job.

    The model is built on PyTorch's ``meta`` device (no memory) with the shapes known at this point;
    where the input shape is not known yet only the argument names are checked. A student with more than
    ``STILLHOUSE_MAX_STUDENT_PARAMETERS`` parameters gets 422 ``student_too_large`` (it would exhaust the worker's
    memory: about 16 bytes per parameter with AdamW in fp32).
    """
    shape, k = _known_shapes(files, spec)
    full = {"num_classes": k or 2, **kwargs}
    if shape is not None:
        full.setdefault("input_shape", list(shape))
    parameters = None
    try:
        if "input_shape" in full:
            parameters = model_checks.architecture_parameters(name, full)
        else:
            model_checks.check_architecture_arguments(name, {"input_shape": [1, 1, 1], **full})
    except DistillError as e:
        raise Unprocessable(f"{prefix}: {e.message}", param=f"{prefix.rsplit('.', 1)[0]}.{e.param}" if e.param else prefix) from e
    except Exception as e:  # noqa: BLE001 - shapes guessed here may be wrong; the worker checks with the real data
        log.debug("architecture %s not checked at creation (%s: %s); the worker will", name, type(e).__name__, e)
    limit = get_settings().max_student_parameters
    if prefix.startswith("student") and parameters is not None and parameters > limit:
        raise Unprocessable(f"{prefix}: this {name} student would have {parameters:,} parameters (about "
                            f"{parameters * 16 / 1024**3:,.1f} GiB to train with AdamW in fp32), over this service's limit of "
                            f"{limit:,} (STILLHOUSE_MAX_STUDENT_PARAMETERS); make it smaller", param=prefix,
                            code="student_too_large")


def _architecture_layers(name: str, kwargs: dict, files: dict[str, File], spec: JobSpec) -> list[str] | None:
    """Layer names of registry architecture ``name`` built (on the meta device) with ``kwargs`` and the shapes known now;
    None when it cannot be built yet (the worker checks then)."""
    shape, k = _known_shapes(files, spec)
    full = {"num_classes": k or 2, **kwargs}
    if shape is not None:
        full.setdefault("input_shape", list(shape))
    try:
        return model_checks.architecture_layer_names(name, full) if "input_shape" in full else None
    except Exception as e:  # noqa: BLE001 - shapes guessed here may be wrong; the worker checks with the real data
        log.debug("layers of %s not checked at creation (%s: %s); the worker will", name, type(e).__name__, e)
        return None


def _check_layers(spec: JobSpec, files: dict[str, File]) -> None:
    """Every feature method's ``student_layer``/``teacher_layer`` (rkd/prototype default: 'penultimate') must name a
    layer of its model: the student's registry architecture, the teacher file's listed layers (``details['layers']``,
    recorded at upload) or its architecture. Raises Unprocessable (422 ``invalid_spec``) naming the model, the layer and
    the nearest names; a model whose layers are not known yet (a dry run, an older upload) is left to the worker."""
    parts = [(param, part) for param, part in spec.method.components() if METHOD_PARAMS[part.name].reads_features]
    if not parts:
        return
    teacher = files.get("teacher")
    t_names, t_model = None, "the teacher"
    if teacher is not None:
        details = teacher.details or {}
        t_model = f"the teacher (file {teacher.id}, {teacher.format})"
        t_names = details.get("layers")
        arch = spec.teacher.architecture.model_dump() if spec.teacher.architecture else details.get("architecture")
        if teacher.format in _WEIGHTS_ONLY and arch and (spec.teacher.architecture or t_names is None):
            t_names = _architecture_layers(arch["name"], dict(arch.get("kwargs") or {}), files, spec)
    s_arch = spec.student.architecture
    s_names = _architecture_layers(s_arch.name, dict(s_arch.kwargs), files, spec) if s_arch else None
    s_model = f"the student ({s_arch.name})" if s_arch else "the student"
    for param, part in parts:
        default = "penultimate" if part.name in ("rkd", "prototype") else None
        for field, names, model in (("student_layer", s_names, s_model), ("teacher_layer", t_names, t_model)):
            layer = getattr(part, field) or default
            if layer is None or names is None:
                continue
            try:
                model_checks.check_layer(layer, names, model, f"{param}.{field}")
            except DistillError as e:
                raise Unprocessable(e.message, param=e.param) from e


def _check_class_counts(spec: JobSpec, files: dict[str, File]) -> None:
    """A teacher with more outputs than the training data has classes needs ``student.architecture.kwargs.num_classes``
    (the teacher's count or the data's) when both are known now; the worker checks again on the first batch. Raises
    Unprocessable (422) with both numbers and the field to set."""
    teacher, arch = files.get("teacher"), spec.student.architecture
    if teacher is None or arch is None or "num_classes" in arch.kwargs:
        return
    _, k = _known_shapes(files, spec)
    train_file = files.get("data.train")
    if spec.data.train.builtin:
        data_k = BUILTIN_CLASSES.get(spec.data.train.builtin)
    else:
        data_k = (train_file.details or {}).get("num_classes") if train_file is not None else None
    if isinstance(k, int) and isinstance(data_k, int) and k > data_k:
        raise Unprocessable(f"the teacher (file {teacher.id}) outputs {k} classes but the data has {data_k}; set "
                            f"student.architecture.kwargs.num_classes to {k} (learn all the teacher's outputs) or {data_k} (learn "
                            f"the data's classes from the teacher's first {data_k} outputs)",
                            param="student.architecture.kwargs.num_classes")


TEXT_TASKS = ("sequence_classification", "sentence_embedding")
LM_TEACHER_FORMATS = ("hf", "gguf")


def _is_lm_teacher(teacher: File) -> bool:
    return teacher.format == "gguf" or (teacher.details or {}).get("task") == "causal_lm"


def job_task(spec: JobSpec, teacher: File) -> str:
    """The task the job will run: the spec's, or from the teacher (a GGUF file or an 'hf' causal LM -> causal_lm,
    'hf' with a classification head -> sequence_classification, other 'hf' -> sentence_embedding, anything else ->
    classification)."""
    if spec.task != "auto":
        return spec.task
    if _is_lm_teacher(teacher):
        return "causal_lm"
    if teacher.format != "hf":
        return "classification"
    return "sequence_classification" if (teacher.details or {}).get("task") == "sequence_classification" else "sentence_embedding"


def _check_from_teacher(spec: JobSpec, d: dict[str, Any]) -> None:
    """``student.from_teacher`` must name layers the teacher has and keep its vocabulary. Raises Unprocessable (422)."""
    ft = spec.student.from_teacher
    layers = d.get("num_hidden_layers")
    if layers and ft.num_layers and ft.num_layers > layers:
        raise Unprocessable(f"student.from_teacher.num_layers={ft.num_layers} but the teacher has {layers} layers",
                            param="student.from_teacher.num_layers")
    if layers and ft.keep_layers and max(ft.keep_layers) >= layers:
        raise Unprocessable(f"student.from_teacher.keep_layers {ft.keep_layers} name layers the teacher lacks (it has {layers}: 0..{layers - 1})",
                            param="student.from_teacher.keep_layers")
    vocab = ft.config.get("vocab_size")
    if vocab is not None and d.get("vocab_size") is not None and int(vocab) != int(d["vocab_size"]):
        raise Unprocessable(f"the student's vocabulary ({vocab} tokens) differs from the teacher's ({d['vocab_size']} tokens); the "
                            "student shares the teacher's tokenizer", param="student.from_teacher.config.vocab_size")


def _check_lm_task(spec: JobSpec, files: dict[str, File]) -> None:
    """A causal-LM job: an LM teacher, a derived student, an LM method, JSONL text/prompt/chat data. Fills a kd job's
    method with ``lm_method_defaults`` (auto -> kd at T=1; a kd temperature left out -> 1). Raises Unprocessable (422)."""
    teacher = files["teacher"]
    if not _is_lm_teacher(teacher):
        raise Unprocessable(f"task 'causal_lm' needs a causal language model teacher (a Hugging Face causal-LM folder or a GGUF "
                            f"file); teacher {teacher.id} is {teacher.format}" + (f" ({teacher.details.get('task')})" if
                            (teacher.details or {}).get("task") else ""), param="task")
    if spec.student.from_teacher is None:
        raise Unprocessable("a causal-LM teacher needs student.from_teacher ({num_layers: N} or {keep_layers: [...]})",
                            param="student.from_teacher")
    _check_from_teacher(spec, teacher.details or {})
    spec.method = lm_method_defaults(spec.method)  # task 'auto' resolved here: stored as given, so the worker reads T=1
    method = spec.method.name
    if method not in LM_METHODS:
        raise Unprocessable(f"task causal_lm uses the methods {', '.join(LM_METHODS)}, not {method!r}", param="method.name")
    if getattr(spec.method, "extra", None):
        raise Unprocessable("task causal_lm takes no extra method terms", param="method.extra")
    if getattr(spec.method, "logit_standardization", False):
        raise Unprocessable("logit_standardization is for classification logits, not task causal_lm", param="method.logit_standardization")
    if spec.data.transfer is not None:
        raise Unprocessable("task causal_lm takes a prompts-only transfer set as data.train (the teacher answers it first); "
                            "data.transfer is for tensor tasks", param="data.transfer")
    for role, ref in (("data.train", spec.data.train), ("data.validation", spec.data.validation)):
        if ref is None or (ref.file_id and role not in files) or (role == "data.validation" and not ref.file_id):
            continue
        if getattr(ref, "builtin", None):
            if ref.builtin != "rotten_tomatoes":
                raise Unprocessable(f"{role}: task causal_lm needs text; builtin {ref.builtin!r} is tensor data", param=role)
            continue
        f = files[role]
        d = f.details or {}
        if f.format != "jsonl" or d.get("kind") not in ("text", "lm"):
            raise Unprocessable(f"{role}: task causal_lm needs a JSONL file of {{'text'}}, {{'prompt', 'completion'}} or {{'messages'}} "
                                f"records; {f.id} is {f.format}", param=role)
        if method == "seqkd" and role == "data.train" and d.get("kind") == "text":
            raise Unprocessable("method seqkd trains on the teacher's answers to prompts; data.train holds plain text (use "
                                "prompt/completion or chat records, or method kd)", param="method.name")


def _check_task(spec: JobSpec, files: dict[str, File]) -> None:
    """Teacher, student, data and method must suit the task. Raises Unprocessable (422)."""
    teacher = files["teacher"]
    task = job_task(spec, teacher)
    if spec.training.devices > 1 and task != "causal_lm":
        raise Unprocessable(f"training.devices={spec.training.devices}: data-parallel training is available for task causal_lm "
                            f"only; task {task!r} trains in one process (training.devices: 1)", param="training.devices")
    if "gguf" in spec.export.formats and task != "causal_lm":
        raise Unprocessable("export format 'gguf' is for task causal_lm (language-model students)", param="export.formats")
    if task == "causal_lm":
        _check_lm_task(spec, files)
        return
    if _is_lm_teacher(teacher):
        raise Unprocessable(f"teacher {teacher.id} is a causal language model; use task 'causal_lm' (or 'auto')", param="task")
    text = task in TEXT_TASKS
    if text != (teacher.format == "hf"):
        raise Unprocessable(f"task {task!r} " + ("needs a Hugging Face teacher (a model folder uploaded as .zip or .tar.gz)" if text
                            else f"is for tensor teachers; a Hugging Face teacher needs task {' or '.join(TEXT_TASKS)}"), param="task")
    if text and spec.student.from_teacher is None:
        raise Unprocessable("a Hugging Face teacher needs student.from_teacher ({num_layers: N} or {keep_layers: [...]})",
                            param="student.from_teacher")
    if not text and spec.student.architecture is None:
        raise Unprocessable("student.from_teacher needs a Hugging Face teacher; give student.architecture", param="student.architecture")
    if task == "sequence_classification" and (teacher.details or {}).get("task") != "sequence_classification":
        raise Unprocessable(f"teacher {teacher.id} has no classification head; use task 'sentence_embedding'", param="task")
    if text:
        _check_from_teacher(spec, teacher.details or {})
    if task == "sentence_embedding" and spec.evaluation.compare_baseline is True:
        raise Unprocessable(NO_EMBEDDING_BASELINE, param="evaluation.compare_baseline")
    method = spec.method.name
    serves = METHOD_PARAMS[method].tasks  # the task families the method declares
    if task not in serves and ("method" in spec.model_fields_set or task != "sentence_embedding"):  # left out: embedding's
        users = [n for n, p in METHOD_PARAMS.items() if task in p.tasks]
        raise Unprocessable(f"method {method!r} is for task {' or '.join(serves)}; task {task!r} uses {', '.join(users)}", param="method.name")
    for role, ref in (("data.train", spec.data.train), ("data.transfer", spec.data.transfer)):
        if ref is None or (ref.file_id and role not in files):  # not uploaded yet (a dry run)
            continue
        is_text = ref.builtin == "rotten_tomatoes" if ref.builtin else (files[role].details or {}).get("kind") == "text"
        if is_text != text:
            raise Unprocessable(f"{role}: task {task!r} needs " + ("text data (JSONL, a CSV with a text column, or builtin rotten_tomatoes)"
                                if text else "tensor data (NPZ, numeric CSV, or builtin digits/mnist5k)"), param=role)


def _check_registry(spec: JobSpec) -> None:
    """A ``registry.mlflow.tracking_uri`` must start with one of ``STILLHOUSE_MLFLOW_ALLOWED_TRACKING_URIS`` when the
    operator set that list (the workers connect to it). Raises Unprocessable (422 ``registry_not_allowed``)."""
    allowed = [p.strip() for p in (get_settings().mlflow_allowed_tracking_uris or "").split(",") if p.strip()]
    if spec.registry is None or not allowed:
        return
    uri = spec.registry.mlflow.tracking_uri
    if not any(uri.startswith(p) for p in allowed):
        raise Unprocessable(f"registry.mlflow.tracking_uri {uri!r} is not one this service exports to (allowed: {', '.join(allowed)})",
                            param="registry.mlflow.tracking_uri", code="registry_not_allowed")


FILE_ROLES = ("teacher", "data.train", "data.validation", "data.transfer")


def validate_references(session: Session, spec: JobSpec, tenant_id: str, *, pending: frozenset[str] = frozenset()) -> dict[str, File]:
    """Check what the spec refers to, beyond pydantic's field checks.

    Files must exist, belong to ``tenant_id`` (another tenant's file gets the same ``file_not_found`` as an
    unknown one) and have the right purpose; a forced teacher format must match the detected one;
    weights-only teachers need an architecture (in the spec or in the file's metadata);
    architectures must be registered with valid kwargs; feature methods' layers must exist in their models; a teacher
    with more classes than the data needs the student's num_classes; a CSV label column must exist; a transfer set must be
    unlabelled; a registry tracking URI must be one the operator allows. Raises Unprocessable (422).

    ``pending`` (a dry run before uploading): roles among ``FILE_ROLES`` whose files are not uploaded yet; their
    ``file_id`` is a placeholder, and the checks that need their file are left to the real creation.
    Returns the referenced files by role (without the pending ones).
    """
    _check_registry(spec)
    files: dict[str, File] = {}
    if "teacher" not in pending:
        files["teacher"] = _check_file(session, spec.teacher.file_id, "teacher", "teacher", tenant_id)
    teacher = files.get("teacher")
    if teacher is not None and spec.teacher.format != "auto" and spec.teacher.format != teacher.format:
        raise Unprocessable(f"teacher.format is {spec.teacher.format!r} but the uploaded file is {teacher.format!r}",
                            param="teacher.format")
    if (teacher is not None and teacher.format in _WEIGHTS_ONLY and spec.teacher.architecture is None
            and not teacher.details.get("architecture")):
        raise Unprocessable(f"teacher file {teacher.id} holds weights only ({teacher.format}); give teacher.architecture "
                            f"(one of {', '.join(model_checks.architecture_names())}) with its kwargs", param="teacher.architecture")
    for role, file_id in spec.file_ids().items():
        if role != "teacher" and role not in pending:
            files[role] = _check_file(session, file_id, role, "dataset", tenant_id)
    if teacher is not None:
        _check_task(spec, files)
    teacher_format = spec.teacher.format if spec.teacher.format != "auto" else (teacher.format if teacher is not None else None)
    try:
        if teacher_format is not None:
            model_checks.check_method_supported(spec.method, teacher_format)
    except DistillError as e:
        raise Unprocessable(e.message, param=e.param or "method.name") from e
    for param, arch in (("teacher.architecture.name", spec.teacher.architecture), ("student.architecture.name", spec.student.architecture)):
        if arch is None:
            continue
        if arch.name not in model_checks.architecture_names():
            raise Unprocessable(f"{param}: unknown architecture {arch.name!r}; available: {', '.join(model_checks.architecture_names())}", param=param)
        _check_architecture(param.rsplit(".", 1)[0], arch.name, arch.kwargs, files, spec)
    _check_layers(spec, files)
    if teacher is not None and job_task(spec, teacher) == "classification":
        _check_class_counts(spec, files)
    for role, ref in (("data.train", spec.data.train), ("data.validation", spec.data.validation), ("data.transfer", spec.data.transfer)):
        f = files.get(role)
        if f is None or ref is None or ref.label_column == "label":
            continue
        param = f"{role}.label_column"
        if f.format != "csv":
            raise Unprocessable(f"{param}: label_column applies to CSV files only; {f.id} is {f.format}", param=param)
        columns = f.details.get("columns") or []
        if ref.label_column not in columns:
            shown = ", ".join(columns[:10]) + (", ..." if len(columns) > 10 else "")
            raise Unprocessable(f"{param}: file {f.id} has no column {ref.label_column!r} (columns: {shown})", param=param)
    transfer = files.get("data.transfer")
    if transfer is not None and (transfer.format != "npz" or transfer.details.get("has_labels")):
        raise Unprocessable("data.transfer must be an NPZ file with inputs 'X' only (unlabelled); labelled rows belong in data.train",
                            param="data.transfer.file_id")
    return files


def request_sha256(spec: JobSpec, metadata: dict[str, str] | None = None) -> str:
    """sha256 hex of the validated spec's canonical JSON (defaults filled in, keys sorted, no whitespace), with the
    job's ``metadata`` when it has any: two bodies that validate to the same spec and metadata have the same digest
    (and a body without metadata the digest it had before metadata existed)."""
    body: Any = spec.model_dump(mode="json")
    if metadata:
        body = {"spec": body, "metadata": metadata}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _replay(session: Session, tenant_id: str, key: str, digest: str) -> Job | None:
    """The tenant's job created with Idempotency-Key ``key``, or None. Raises Conflict (409
    ``idempotency_key_reused``) when that job was created from another body."""
    job = session.scalars(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key)).first()
    if job is not None and job.request_sha256 != digest:
        session.rollback()
        raise Conflict(f"Idempotency-Key {key!r} was already used for job {job.id} with another request body; use a new key "
                       "for a new job", param="Idempotency-Key", code="idempotency_key_reused")
    return job


def dry_run(session: Session, spec: JobSpec, tenant_id: str, *, pending: frozenset[str] = frozenset()) -> None:
    """Validate ``spec`` as ``create_job`` would (references, architectures, task), without creating anything or taking
    the tenant's lock; ``pending`` roles are skipped (see ``validate_references``). Raises Unprocessable (422) for an
    unknown pending role or any invalid reference."""
    unknown = sorted(pending - set(FILE_ROLES))
    if unknown:
        raise Unprocessable(f"pending: unknown file role(s) {', '.join(unknown)}; use {', '.join(FILE_ROLES)}", param="pending")
    try:
        validate_references(session, spec, tenant_id, pending=pending)
    finally:
        session.rollback()


def create_job(session: Session, spec: JobSpec, tenant_id: str, *, idempotency_key: str | None = None,
               metadata: dict[str, str] | None = None) -> tuple[Job, bool]:
    """Create a queued job of ``tenant_id``, commit, then send its id to the workers and record the send
    (``enqueued_at``). Returns (job, replayed). A job committed but never sent (the process died in between) keeps
    ``enqueued_at`` NULL; the sweep (``stillhouse.jobs.sweep``) sends it.

    With ``idempotency_key`` (≤ 255 characters, unique per tenant) a repeat of the same body returns the job the
    key first created, with ``replayed`` True, and sends nothing to the broker; concurrent duplicates are
    serialised by the tenant lock (and the unique constraint on (tenant_id, idempotency_key) as a last guard).
    The live-job limit is checked under the same lock, so concurrent creations cannot pass it together.

    ``metadata``: the caller's string map, stored with the job (its limits are checked by ``JobCreate``).

    Raises Unprocessable (422) for bad references, Conflict (409 ``idempotency_key_reused``) for a key used with
    another body, TooManyRequests (429 ``too_many_jobs``) at the tenant's live-job limit, ServiceUnavailable (503)
    when the broker cannot be reached (the committed job is then marked failed with code ``broker_unavailable``,
    so nothing is left queued forever).
    """
    digest = request_sha256(spec, metadata)
    if idempotency_key is not None and (job := _replay(session, tenant_id, idempotency_key, digest)) is not None:
        return job, True
    files = validate_references(session, spec, tenant_id)
    tenant = lock_tenant(session, tenant_id)  # serialises this tenant's creations until commit/rollback
    if idempotency_key is not None and (job := _replay(session, tenant_id, idempotency_key, digest)) is not None:
        session.rollback()  # release the lock
        return job, True
    check_job_slot(session, tenant, get_settings())
    spec_json = spec.model_dump(mode="json")
    job = Job(id=new_id("job"), tenant_id=tenant_id, name=spec.name, status=states.QUEUED, spec=spec_json,
              attempt=0, idempotency_key=idempotency_key, request_sha256=digest, queue=queue_for(spec_json),
              job_metadata=dict(metadata or {}))
    try:
        session.add(job)
        session.flush()
        for role, f in files.items():
            session.add(JobFile(job_id=job.id, role=role, file_id=f.id))
        session.add(JobEvent(job_id=job.id, type="status", message="job created and queued", data={"status": states.QUEUED}))
        session.commit()
    except IntegrityError as e:  # a referenced file was deleted between the check and the commit (or, in theory, a duplicate key)
        session.rollback()
        if idempotency_key is not None and (job := _replay(session, tenant_id, idempotency_key, digest)) is not None:
            return job, True
        raise Unprocessable("a file this job refers to was deleted while the job was being created; upload it again",
                            code="file_not_found") from e
    try:
        enqueue_job(job.id, queue=job.queue)
    except Exception as e:  # noqa: BLE001 - any broker failure
        log.exception("could not enqueue %s", job.id)
        states.transition(session, job.id, states.FAILED, error_code="broker_unavailable",
                          error_message=f"could not reach the broker: {e}")
        session.commit()
        raise ServiceUnavailable(f"job {job.id} was created but the broker is unreachable ({type(e).__name__}); it is marked failed",
                                 code="broker_unavailable") from e
    try:
        mark_sent(session, job.id)
    except Exception:  # noqa: BLE001 - the job is sent; left marked unsent, the sweep sends it once more (harmless)
        session.rollback()
        log.exception("could not record that %s was sent", job.id)
    return job, False


def get_job(session: Session, job_id: str, tenant_id: str) -> Job:
    """The job row, if it belongs to ``tenant_id``. Raises NotFound (404) alike for unknown ids and other tenants' jobs."""
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant_id:
        raise NotFound(f"no job {job_id!r}", param="job_id")
    return job


_VIEW_COLUMNS = [c for c in Job.__table__.columns if c.key != "report"]
STATUS_READ = (select(*_VIEW_COLUMNS)
                .where(Job.__table__.c.id == bindparam("job_id"), Job.__table__.c.tenant_id == bindparam("tenant_id")))  # compiled once


def job_status(job_id: str, tenant_id: str) -> bytes:
    """The JSON body (a ``JobObject``) of tenant ``tenant_id``'s job ``job_id`` for ``GET /v1/jobs/{id}``, the endpoint
    clients poll; call it in a worker thread. Raises NotFound (404), also for another tenant's job.

    Kept light, each step measured (bench/load_status.py, bench/status_read.py): one autocommit SELECT on a pooled
    connection (no session, no ORM identity map, no BEGIN/ROLLBACK round trips) that leaves out the ``report`` column
    (tens of KiB of JSON a status never shows), and the row serialised straight to JSON by pydantic-core: the
    stored spec was validated when the job was created, so it is not validated again (40 µs), and the endpoint
    returns these bytes instead of a model FastAPI would validate once more. ``tests/api/test_status_read.py`` checks
    the bytes equal the ``JobObject`` the other endpoints return."""
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        row = conn.execute(STATUS_READ, {"job_id": job_id, "tenant_id": tenant_id}).first()
    if row is None:
        raise NotFound(f"no job {job_id!r}", param="job_id")
    return to_json(job_view(row))


def list_jobs(session: Session, tenant_id: str, *, limit: int, after: str | None, status: str | None,
              metadata: dict[str, str] | None = None) -> tuple[list[Job], bool]:
    """The tenant's jobs newest first, optionally of one status and with every ``metadata`` key equal to its value;
    returns (rows, has_more). Raises NotFound (404) when ``after`` is not one of the tenant's jobs."""
    q = select(Job).options(defer(Job.report)).where(Job.tenant_id == tenant_id)
    if status:
        q = q.where(Job.status == status)
    for key, value in (metadata or {}).items():
        q = q.where(Job.job_metadata[key].as_string() == value)
    anchor = session.get(Job, after) if after else None
    if anchor is not None and anchor.tenant_id != tenant_id:
        anchor = None
    if after and anchor is None:
        raise NotFound(f"after: no job {after!r} to continue from", param="after")
    return newest_first(session, q, Job, limit=limit, anchor=anchor)


def cancel_job(session: Session, job_id: str, tenant_id: str) -> Job:
    """Cancel: a queued job becomes ``cancelled`` at once (it will never start), and the tenant's sweeps step at once
    (``stillhouse.sweeps.scheduler.job_finished``: the trial's own sweep tells Optuna, a sweep waiting for a free job
    slot starts a trial); a running one becomes ``cancelling`` and its worker stops within one step (the worker's end
    of the job steps the sweeps). Cancelling twice is harmless.
    Raises NotFound (404, also for another tenant's job), Conflict (409 ``job_not_cancellable``) for a finished job."""
    job = get_job(session, job_id, tenant_id)
    if job.status == states.CANCELLING:
        return job
    ok = (states.transition(session, job_id, states.CANCELLED, only_from={states.QUEUED}, event="cancelled before it started")
          or states.transition(session, job_id, states.CANCELLING, event="cancel requested; stopping at the next step"))
    if not ok:
        session.rollback()
        job = get_job(session, job_id, tenant_id)
        if job.status == states.CANCELLING:
            return job
        raise Conflict(f"job {job_id} is already {job.status}; only queued or running jobs can be cancelled",
                       code="job_not_cancellable")
    session.commit()
    session.expire_all()
    job = get_job(session, job_id, tenant_id)
    if job.status == states.CANCELLED:  # its slot is free now: a waiting sweep (or the trial's own) steps at once
        job_finished(job_id)
    return job


def delete_job(session: Session, store: ArtifactStore, job_id: str, tenant_id: str) -> int:
    """Delete one of the tenant's finished (succeeded, failed or cancelled) jobs: its row with its events, metrics,
    file links and artifact rows, then its folder in the store (artifacts, and checkpoints a failure left). The
    artifacts stop counting against the tenant's storage quota at the commit. The uploaded files it used are kept.
    Returns the artifact bytes freed. Raises NotFound (404, also for another tenant's job), Conflict (409
    ``job_not_finished``) while it is queued, running or cancelling."""
    job = get_job(session, job_id, tenant_id)
    freed = int(session.scalar(select(func.coalesce(func.sum(Artifact.bytes), 0)).where(Artifact.job_id == job_id)) or 0)
    res = session.execute(sa_delete(Job).where(Job.id == job_id, Job.tenant_id == tenant_id, Job.status.in_(states.TERMINAL))
                          .execution_options(synchronize_session=False))
    if res.rowcount != 1:
        session.rollback()
        raise Conflict(f"job {job_id} is {job.status}; only finished jobs (succeeded, failed, cancelled) can be deleted: cancel it "
                       "first (POST /v1/jobs/{id}/cancel) and delete it once it is cancelled", param="job_id", code="job_not_finished")
    for model in (JobEvent, Metric, Artifact, JobFile):  # also where the database does not cascade (SQLite without foreign keys)
        session.execute(sa_delete(model).where(model.job_id == job_id).execution_options(synchronize_session=False))
    session.commit()
    try:
        store.delete(store.job_key(job_id))
    except (OSError, StoreError):  # the rows are gone, so nothing counts these bytes; an operator can remove the folder
        log.exception("job %s deleted but its folder could not be removed", job_id)
    return freed


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    return None if a is None or b is None else round((b - a).total_seconds(), 3)


def _waiting(status: str, queue: str | None) -> dict[str, str] | None:
    """While queued: ``{"code": "no_worker_for_queue", "message"}`` when no live worker consumes the job's queue (the
    workers table, read at most every few seconds per process, see ``stillhouse.jobs.workers``), else None."""
    if status != states.QUEUED:
        return None
    reason = workers.waiting_reason(queue or get_settings().queue)
    return {"code": "no_worker_for_queue", "message": reason} if reason else None


def job_view(job: Any) -> dict[str, Any]:
    """The API view of a job (a ``Job`` row or a Core row with its columns) as a plain dict in ``JobObject``'s field order,
    the stored spec as stored."""
    now = utcnow()
    started, finished = job.started_at, job.finished_at
    return {
        "id": job.id, "object": "job", "name": job.name, "status": job.status, "phase": job.phase,
        "progress": {"epoch": job.progress_epoch, "epochs": job.progress_epochs, "step": job.progress_step,
                     "total_steps": job.progress_total_steps, "fraction": job.progress_fraction, "eta_s": job.progress_eta_s},
        "error": {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None,
        "attempt": job.attempt, "handbacks": job.handbacks or 0,
        "created_at": job.created_at, "updated_at": job.updated_at, "started_at": started, "finished_at": finished,
        "timings": {"queued_s": _seconds(job.created_at, started or (None if finished else now)),
                    "running_s": _seconds(started, finished or now) if started else None},
        "queue": job.queue or get_settings().queue, "waiting": _waiting(job.status, job.queue),
        "registry": dict(job.registry_export) if job.registry_export else None,
        "spec": job.spec, "metadata": (job.metadata if isinstance(job, Row) else job.job_metadata) or {},
    }


def to_schema(job: Job) -> JobObject:
    """The API view of a job row, validated (the spec too)."""
    return JobObject.model_validate(job_view(job))


def list_events(session: Session, job_id: str, tenant_id: str, *, after: int | None, limit: int) -> tuple[list[JobEvent], bool]:
    """A job's events in order, those with id > ``after``; returns (rows, has_more). Raises NotFound (also for another
    tenant's job)."""
    get_job(session, job_id, tenant_id)
    return oldest_first(session, select(JobEvent).where(JobEvent.job_id == job_id), JobEvent, limit=limit, after=after)


def list_metrics(session: Session, job_id: str, tenant_id: str, *, name: str | None, split: str | None, after: int | None,
                 limit: int) -> tuple[list[Metric], bool]:
    """A job's metric rows in recording order, filtered by name/split; returns (rows, has_more). Raises NotFound (also
    for another tenant's job)."""
    get_job(session, job_id, tenant_id)
    q = select(Metric).where(Metric.job_id == job_id)
    if name:
        q = q.where(Metric.name == name)
    if split:
        q = q.where(Metric.split == split)
    return oldest_first(session, q, Metric, limit=limit, after=after)


def get_report(session: Session, job_id: str, tenant_id: str) -> AnyReport:
    """The compression report of one of the tenant's succeeded jobs, as its typed variant (``distill.report``) with
    ``job_id`` set; reports stored before the report was typed validate too. Raises NotFound, Conflict (409
    ``report_not_ready``), InternalError (500 ``report_unreadable``, logged) for a stored report that fits no variant."""
    job = get_job(session, job_id, tenant_id)
    if job.report is None:
        raise Conflict(f"job {job_id} is {job.status}; the report exists once it has succeeded", code="report_not_ready")
    try:
        report = parse_report(job.report)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        log.error("the stored report of %s does not fit the report schema: %s", job_id, e)
        raise InternalError(f"the stored report of job {job_id} cannot be read ({where}: {first['msg']}); the event is logged "
                            "on the server", code="report_unreadable") from None
    report.job_id = job_id
    return report


def list_artifacts(session: Session, job_id: str, tenant_id: str) -> list[Artifact]:
    """A job's published artifacts by name (empty until it succeeds). Raises NotFound (also for another tenant's job)."""
    get_job(session, job_id, tenant_id)
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)))


def get_artifact(session: Session, job_id: str, name: str, tenant_id: str) -> Artifact:
    """One artifact. Raises NotFound (404) for an unknown job (or another tenant's) or name."""
    get_job(session, job_id, tenant_id)
    row = session.scalars(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)).first()
    if row is None:
        raise NotFound(f"job {job_id} has no artifact {name!r}", param="name")
    return row
