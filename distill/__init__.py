"""stillhouse's distillation core: a plain PyTorch library (no FastAPI, Celery, SQLAlchemy, nor anything of the
service). Import what you need from its modules; this package itself imports nothing, so ``distill.spec`` (the job
spec, plain pydantic) and ``distill.errors`` load without torch.

Entry point: ``distill.job.run_job(spec, inputs, workdir, reporter)``. Building blocks: the architecture registry
(``models``), safe file handling (``formats``, ``checkpoints``, ``hf_archive``), teacher wrappers (``teachers``), data
loading (``data``), KD methods (``methods``), the one trainer and its task adapters (``training``), evaluation (``evaluation``), export
(``export``), the text tasks (``text``) and teacher training for demos (``teacher_training``).
"""
