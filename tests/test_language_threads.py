"""The shared sentence encoder is built once and answers from several threads at once (the training
data's prefetch thread beside the main one): no second import of transformers racing the first."""

import threading

import numpy as np

from reverie import language


def test_default_encoder_is_one_object_and_encodes_from_threads(monkeypatch):
    monkeypatch.setattr(language, "_ENCODER", None)
    built, results, errors = [], {}, []
    real = language.SentenceEncoder

    class Counting(real):
        def __init__(self):
            built.append(1)
            super().__init__()

    monkeypatch.setattr(language, "SentenceEncoder", Counting)
    texts = [f"touch the {c} cube {i}" for c in ("red", "green", "blue") for i in range(4)]

    def work(k):
        try:
            results[k] = language.embed(texts[k::3] + texts)
        except Exception as e:  # noqa: BLE001 - the test reports any thread's failure
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(built) == 1
    alone = real().encode(texts)
    for k, out in results.items():
        assert np.allclose(out[-len(texts):], alone, atol=1e-5)
