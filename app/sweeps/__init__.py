"""``/v1/sweeps``: a search over students and distillation settings, each trial an ordinary job."""
