"""Sweeps: a search over students and distillation settings (Optuna), each trial an ordinary job; ``spec`` (the
request), ``scheduler`` (asks, sends, tells, the front)."""
