"""Export's self-check: the ONNX graphs against PyTorch on recorded data.

Actions: recorded episodes are replayed through `AgentController` / `ScratchController` (PyTorch,
deterministic latents) and through policy.onnx in onnxruntime, both fed every camera the policy
reads, carrying the state tensors exactly as the runtime does (initial values at each episode start,
`next_*` fed back). Halfway through every episode the instruction switches to another episode's, so
the check also covers a mid-episode change.
Both sides get the same PyTorch instruction embedding, so action errors are the policy graph's own.
Units: the controller takes the recorded state and returns actions in the data's units; the graph
works in the model's, so it gets the state normalised as the runtime does (runtime/bundle.py) and the
error is measured in model units (the actor's [-1, 1]), where the tolerance means the same for every
store.

Embeddings: text_encoder.onnx (through the bundle's tokenizer.json) against reverie.language.embed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from reverie.runtime.text_encoder import TextEncoder, session


@dataclasses.dataclass
class ParityResult:
    steps: int
    episodes: int
    max_action_error: float
    max_embedding_error: float
    instructions: int

    def to_json(self, tolerance: float) -> dict:
        return dataclasses.asdict(self) | {"tolerance": tolerance}


def episodes(stores, image_keys: list[str], limit: int):
    """Yield (instruction, {every camera, state}) episodes from the stores in order until `limit` rows."""
    rows = 0
    for store in stores:
        for i in range(store.num_episodes):
            meta = store.meta(i)
            ep = store.episode(i, keys=[*image_keys, "state"])
            yield meta.instruction, ep
            rows += len(ep["state"])
            if rows >= limit:
                return


def action_parity(controller, step, onnx_path: Path, stores, image_keys: list[str], steps: int,
                  threads: int = 1) -> tuple[float, int, int, set[str]]:
    """-> (max |a_onnx - a_torch|, rows compared, episodes, instructions seen). image_keys: every camera
    the policy reads, the main one first (the graph takes them in that order)."""
    from reverie.language import embed

    from reverie.normalize import Normalizer

    norm = getattr(controller, "normalizer", None) or Normalizer()
    sess = session(onnx_path, threads)
    names = step.input_names()
    initial = [s.zeros().numpy() for s in step.state_specs()]
    eps = list(episodes(stores, image_keys, steps))
    texts = [text for text, _ in eps]
    worst, rows = 0.0, 0
    for e, (text, ep) in enumerate(eps):
        switch_to = texts[(e + 1) % len(texts)]
        controller.reset(text)
        carried, current = initial, text
        n = len(ep["state"])
        for t in range(n):
            if t == n // 2 and switch_to != current:
                current = switch_to
                controller.set_instruction(current)
            obs = {**{key: ep[key][t] for key in image_keys}, "state": ep["state"][t]}
            expected = norm.normalize("action", controller.act(obs))           # (A,) model units
            instr = embed([current]).astype(np.float32)                        # (1, 384)
            state = norm.normalize("state", np.asarray(ep["state"][t], np.float32))
            main, *extra = (ep[key][t][None] for key in image_keys)            # (1, H, W, 3) each
            feeds = [main, state[None], instr, *extra, *carried]
            out = sess.run(None, dict(zip(names, feeds)))
            carried = out[1:]
            worst = max(worst, float(np.abs(out[0][0] - expected).max()))
            rows += 1
            if rows >= steps:
                return worst, rows, e + 1, set(texts)
    return worst, rows, len(eps), set(texts)


def embedding_parity(bundle: Path, instructions: set[str]) -> float:
    """Max |e_onnx - e_torch| over the instructions, one batch of all of them (padding exercised),
    plus a text longer than the encoder's 128-token window (truncation exercised)."""
    from reverie.language import embed

    texts = sorted(instructions) + ["pick up the red cube and put it down " * 30]
    onnx_emb = TextEncoder(bundle).encode(texts)
    with torch.no_grad():
        torch_emb = embed(texts)
    return float(np.abs(onnx_emb - torch_emb).max())
