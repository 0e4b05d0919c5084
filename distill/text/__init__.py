"""Text tasks of the distillation core: Hugging Face teachers, derived transformer students, text data,
sentence-embedding and sequence-classification distillation (``run_text_job``)."""

from .job import run_text_job

__all__ = ["run_text_job"]
