"""The bundle's instruction encoder without torch: `tokenizers` + onnxruntime -> (N, 384) float32.

text_encoder.onnx is MiniLM with mean pooling and L2 normalisation inside the graph (inputs
input_ids / attention_mask int64 (N, L), output sentence_embedding (N, 384)), so this file only
tokenises and pads. Embeddings are cached per string: a deployment sees a handful of instructions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reverie.errors import BundleError

MAX_TOKENS = 128  # the encoder's training length (reverie.language.MAX_TOKENS); longer text is truncated


def session(path: Path, threads: int = 1):
    """An onnxruntime CPU session; a file that does not load is a BundleError that says so."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise BundleError(f"{path} does not load in onnxruntime {ort.__version__}: {str(e).splitlines()[0]}; "
                          "the file is damaged or was written for a newer runtime, re-run `reverie export`") from e


class TextEncoder:
    def __init__(self, bundle: Path, threads: int = 1):
        from tokenizers import Tokenizer

        bundle = Path(bundle)
        try:
            self.tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
        except Exception as e:
            raise BundleError(f"{bundle / 'tokenizer.json'} is not a tokenizers file ({e}); re-run `reverie export`") from e
        # The file pads every input to 128 tokens; padding to the longest input of a batch gives the
        # same embedding (padded positions are masked out of the pooling) for less work.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.session = session(bundle / "text_encoder.onnx", threads)
        self.output = self.session.get_outputs()[0].name
        self._cache: dict[str, np.ndarray] = {}

    def tokens(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """-> input_ids, attention_mask, int64 (N, L) padded with 0 to the longest text."""
        encodings = self.tokenizer.encode_batch(texts)
        length = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), length), np.int64)
        mask = np.zeros((len(texts), length), np.int64)
        for i, e in enumerate(encodings):
            ids[i, :len(e.ids)] = e.ids
            mask[i, :len(e.ids)] = 1
        return ids, mask

    def encode(self, texts: list[str] | str) -> np.ndarray:
        """(N, 384) unit-norm embeddings, or (384,) for one string."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            ids, mask = self.tokens(missing)
            out = self.session.run([self.output], {"input_ids": ids, "attention_mask": mask})[0]
            for text, vec in zip(missing, np.asarray(out, np.float32)):
                self._cache[text] = vec
        result = np.stack([self._cache[t] for t in texts])
        return result[0] if single else result
