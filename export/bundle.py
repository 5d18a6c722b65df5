"""A verified bundle, ready to act: manifest checks, onnxruntime sessions, the carried state.

    bundle = Bundle.load("bundles/touch")          # checksums, graph signatures: BundleError if bad
    bundle.check_robot(image_shape=(64, 64, 3), state_dim=6, action_dim=6, control_hz=30.0)
    bundle.reset()                                 # start of an episode: initial state tensors
    action = bundle.act(image, state, embedding)   # (A,) float32; the state carries over

Units: act() takes the state and returns the action in the training data's units; the manifest's
`normalization` (reverie/normalize.py) maps the state into the graph's units and the graph's action
(in [-1, 1]) back. A bundle exported before normalisation existed has none: identity.

No torch: numpy and onnxruntime only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from reverie.errors import BundleError
from reverie.export import manifest as manifest_lib
from reverie.export.text_encoder import TextEncoder, session
from reverie.normalize import Normalizer


class Bundle:
    def __init__(self, path: Path, manifest: dict, policy, encoder: TextEncoder):
        self.path, self.manifest, self.session, self.encoder = path, manifest, policy, encoder
        obs = manifest["observation"]
        self.image_key = obs["image_key"]
        self.image_shape = tuple(obs["image"]["shape"])
        self.state_dim = int(obs["state"]["shape"][0])
        self.action_dim = int(manifest["action"]["shape"][0])
        self.control_hz = float(manifest["control_hz"])
        self.max_chars = int(obs["instruction"]["max_chars"])
        self.specs = manifest["state_tensors"]
        self.inputs = manifest["onnx"]["policy"]["inputs"]
        try:
            self.normalizer = Normalizer.from_json(manifest.get("normalization"))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise BundleError(f"{path}/manifest.json: bad `normalization` ({e}); re-run `reverie export`") from e
        self._carried: list[np.ndarray] = []
        self.reset()

    @classmethod
    def load(cls, path: str | Path, threads: int = 1) -> "Bundle":
        path = Path(path)
        manifest = manifest_lib.read(path)
        manifest_lib.check_fields(manifest, path)  # before hashing the files: a cheap, named refusal
        manifest_lib.check_files(path, manifest)
        policy = session(path / manifest["onnx"]["policy"]["file"], threads)
        encoder = TextEncoder(path, threads)
        bundle = cls(path, manifest, policy, encoder)
        bundle._check_graph()
        return bundle

    def _check_graph(self) -> None:
        """The graph's inputs and outputs must be the ones the manifest describes."""
        got_in = {i.name: i.shape for i in self.session.get_inputs()}
        got_out = [o.name for o in self.session.get_outputs()]
        h, w, c = self.image_shape
        want = {"image": [1, h, w, c], "state": [1, self.state_dim], "instruction": [1, 384],
                **{s["name"]: list(s["shape"]) for s in self.specs}}
        if list(got_in) != self.inputs or set(got_in) != set(want):
            raise BundleError(f"{self.path}/policy.onnx takes inputs {list(got_in)}, the manifest says "
                              f"{self.inputs}; the files come from different exports, re-run `reverie export`")
        for name, shape in want.items():
            if list(got_in[name]) != shape:
                raise BundleError(f"{self.path}: policy.onnx input {name!r} has shape {got_in[name]}, the "
                                  f"manifest says {shape}; re-run `reverie export`")
        if got_out != self.manifest["onnx"]["policy"]["outputs"]:
            raise BundleError(f"{self.path}/policy.onnx outputs {got_out}, the manifest says "
                              f"{self.manifest['onnx']['policy']['outputs']}; re-run `reverie export`")

    def check_robot(self, image_shape, state_dim: int, action_dim: int, control_hz: float | None,
                    what: str = "robot") -> None:
        """Refuse a robot whose camera, joints or rate differ from what the policy was exported for."""
        problems = []
        if tuple(image_shape) != self.image_shape:
            problems.append(f"camera {self.image_key} gives {tuple(image_shape)} images, the policy expects "
                            f"{self.image_shape} (set the camera's resolution to match)")
        if state_dim != self.state_dim:
            problems.append(f"state has {state_dim} values, the policy reads {self.state_dim}")
        if action_dim != self.action_dim:
            problems.append(f"the arm takes {action_dim} action values, the policy emits {self.action_dim}")
        if control_hz is not None and abs(control_hz - self.control_hz) > 1e-6:
            problems.append(f"it runs at {control_hz:g} Hz, the policy was exported for {self.control_hz:g} Hz")
        if problems:
            raise BundleError(f"bundle {self.path} does not fit the {what}: " + "; ".join(problems)
                              + ". Deploy on the robot it was exported for, or re-export with arm=<arm config>.")

    def reset(self) -> None:
        """Initial state tensors: the start of an episode."""
        self._carried = [np.full(s["shape"], s["initial"], np.float32) for s in self.specs]

    def act(self, image: np.ndarray, state: np.ndarray, embedding: np.ndarray) -> np.ndarray:
        """image uint8 (H, W, 3), state (J,), embedding (1, 384) -> action (A,) float32, state and action
        in the training data's units."""
        state = self.normalizer.normalize("state", np.asarray(state, np.float32).reshape(-1))
        feeds = [np.ascontiguousarray(image, np.uint8)[None], state.reshape(1, -1),
                 np.asarray(embedding, np.float32).reshape(1, -1), *self._carried]
        out = self.session.run(None, dict(zip(self.inputs, feeds)))
        self._carried = out[1:]
        return self.normalizer.denormalize("action", np.asarray(out[0][0], np.float32))
