"""The distillation-core tests run PyTorch on one thread; their model fixtures (digits teacher, MiniLM, tiny BERT)
are shared with the rest of the suite in ``tests/models.py``."""

import torch

torch.set_num_threads(1)
