"""Stored job specs in the per-method shape: each method carries its own parameters (``dkd_beta`` -> ``beta`` under
method dkd, ``embedding: {...}`` -> ``method: {name: embedding, ...}``), ``momentum`` only with sgd, and the null
alternatives of the student / dataset unions left out. A data migration: rewrites ``jobs.spec`` in place so every
stored spec validates against the new ``JobSpec`` (the API and the workers validate what they read).

The conversion (``convert``) is frozen here, independent of the code: it maps the flat spec of migrations 0001-0007.

Revision ID: 0008_method_params
Revises: 0007_sweeps
Create Date: 2026-12-02 05:00:00

"""
from __future__ import annotations

import copy
from typing import Any, Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0008_method_params"
down_revision: Union[str, Sequence[str], None] = "0007_sweeps"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_OWN = {  # method -> {old flat field: new field}
    "kd": {"temperature": "temperature", "logit_standardization": "logit_standardization"},
    "hard_label": {},
    "dkd": {"temperature": "temperature", "logit_standardization": "logit_standardization", "dkd_alpha": "alpha",
            "dkd_beta": "beta", "dkd_warmup_epochs": "warmup_epochs"},
    "fitnet": {"student_layer": "student_layer", "teacher_layer": "teacher_layer"},
    "attention_transfer": {"student_layer": "student_layer", "teacher_layer": "teacher_layer", "at_p": "p", "at_beta": "beta"},
    "rkd": {"student_layer": "student_layer", "teacher_layer": "teacher_layer", "rkd_distance_weight": "distance_weight",
            "rkd_angle_weight": "angle_weight"},
    "prototype": {"student_layer": "student_layer", "teacher_layer": "teacher_layer", "prototype_mse_weight": "mse_weight",
                  "prototype_kl_weight": "kl_weight", "prototype_temperature": "temperature"},
}
_EMBEDDING_DEFAULTS = {"cosine_weight": 1.0, "mse_weight": 0.0, "hidden_layers": [], "hidden_weight": 1.0, "attention_layers": [],
                       "attention_weight": 1.0}


def _method(old: dict[str, Any], *, main: bool) -> dict[str, Any]:
    name = old.get("name", "kd")
    new: dict[str, Any] = {"name": name}
    for k, v in old.items():
        if k in _OWN.get(name, {}) and v is not None:
            new[_OWN[name][k]] = v
    if main:
        if name != "dkd" and "alpha" in old:
            new["alpha"] = old["alpha"]
        if old.get("ce_weight") is not None:
            new["ce_weight"] = old["ce_weight"]
        new["extra"] = [_method(e, main=False) for e in old.get("extra") or []]
    elif "weight" in old:
        new["weight"] = old["weight"]
    return new


def convert(spec: dict[str, Any]) -> dict[str, Any]:
    """A stored spec of the flat shape in the per-method shape (a spec already converted comes back equal)."""
    s = copy.deepcopy(spec)
    method = s.get("method") or {"name": "kd"}
    embedding = {**_EMBEDDING_DEFAULTS, **(s.pop("embedding", None) or {})}
    if "dkd_alpha" in method or "at_p" in method or "rkd_angle_weight" in method or "prototype_kl_weight" in method or "embedding" in spec:
        is_embedding = method.get("name") == "embedding" or s.get("task") == "sentence_embedding" or embedding != _EMBEDDING_DEFAULTS
        s["method"] = {"name": "embedding", **embedding} if is_embedding else _method(method, main=True)
    opt = (s.get("training") or {}).get("optimizer")
    if isinstance(opt, dict) and opt.get("name", "adamw") == "adamw":
        opt.pop("momentum", None)
    student = s.get("student")
    if isinstance(student, dict):
        for k in ("architecture", "from_teacher"):
            if k in student and student[k] is None:
                del student[k]
    data = s.get("data")
    if isinstance(data, dict):
        for role in ("train", "transfer"):
            ref = data.get(role)
            if isinstance(ref, dict):
                for k in ("builtin", "file_id"):
                    if k in ref and ref[k] is None:
                        del ref[k]
    return s


def upgrade() -> None:
    """Rewrite every stored job spec and sweep base spec."""
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("spec", sa.JSON))
    conn = op.get_bind()
    for job_id, spec in conn.execute(sa.select(jobs.c.id, jobs.c.spec)).all():
        if isinstance(spec, dict):
            new = convert(spec)
            if new != spec:
                conn.execute(jobs.update().where(jobs.c.id == job_id).values(spec=new))
    sweeps = sa.table("sweeps", sa.column("id", sa.String), sa.column("spec", sa.JSON))  # a sweep's base job spec (0007)
    for sweep_id, spec in conn.execute(sa.select(sweeps.c.id, sweeps.c.spec)).all():
        if isinstance(spec, dict) and isinstance(spec.get("base"), dict):
            base = convert(spec["base"])
            if base != spec["base"]:
                conn.execute(sweeps.update().where(sweeps.c.id == sweep_id).values(spec={**spec, "base": base}))


def downgrade() -> None:
    """Stored specs stay in the per-method shape (the older code cannot read them; restore a backup to go back)."""
