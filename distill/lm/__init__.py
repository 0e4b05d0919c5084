"""Causal language models in the distillation core: decoder-only teachers from Hugging Face folders or single-file
GGUF models (``models``, ``gguf``), layer-dropped or narrower students (``models``), JSONL text / prompt-completion /
chat data with packing (``data``), token-level and sequence-level losses and the top-k teacher cache (``losses``,
``cache``), teacher-generated transfer sets that resume after a killed worker (``generate``), the evaluation
(``evaluate``: perplexity with intervals, agreement, per-token KL, generations side by side, prefill and decode
speed) and the student's artifacts (``export``: a Hugging Face folder, ONNX, GGUF).

Plain PyTorch and transformers; nothing of the service. This package itself imports nothing; ``distill.formats`` uses ``gguf``, ``records`` and ``uploads``
(the upload checks of GGUF teachers).
"""
