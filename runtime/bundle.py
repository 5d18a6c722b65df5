"""A verified bundle, ready to act: manifest checks, onnxruntime sessions, the carried state.

    bundle = Bundle.load("bundles/touch")          # checksums, graph signatures: BundleError if bad
    bundle.check_robot({"image/front": (64, 64, 3)}, state_dim=6, action_dim=6, control_hz=30.0)
    bundle.reset()                                 # start of an episode: initial state tensors
    action = bundle.act_on(observation, embedding) # (A,) float32; the state carries over
    action = bundle.act(image, state, embedding)   # the same, a single-camera bundle's frame given alone

Cameras: `bundle.image_keys` lists every camera the policy reads, the main one (`image_key`) first,
then the manifest's `observation.extra_images` (multi-camera scratch policies); act_on reads them all
from an observation dict ({"image/front": frame, "image/wrist": frame, "state": ...}).

Units: act() takes the state and returns the action in the training data's units; the manifest's
`normalization` (reverie/normalize.py) maps the state into the graph's units and the graph's action
(in [-1, 1]) back. A bundle exported before normalisation existed has none: identity.

No torch: numpy and onnxruntime only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from reverie.errors import BundleError
from reverie.runtime import manifest as manifest_lib
from reverie.runtime.text_encoder import TextEncoder, session
from reverie.normalize import Normalizer


class Bundle:
    def __init__(self, path: Path, manifest: dict, policy, encoder: TextEncoder):
        self.path, self.manifest, self.session, self.encoder = path, manifest, policy, encoder
        obs = manifest["observation"]
        self.image_key = obs["image_key"]
        self.image_shape = tuple(obs["image"]["shape"])
        self.cameras = manifest_lib.cameras(manifest)   # {key: (H, W, 3)}, the main camera first
        self.image_keys = list(self.cameras)
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
        want = {"image": [1, *self.image_shape], "state": [1, self.state_dim], "instruction": [1, 384],
                **{manifest_lib.input_name(k): [1, *shape] for k, shape in list(self.cameras.items())[1:]},
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

    def check_robot(self, cameras: Mapping[str, tuple] | tuple, state_dim: int, action_dim: int,
                    control_hz: float | None, what: str = "robot", camera_fix: str = "") -> None:
        """Refuse a robot whose cameras, joints or rate differ from what the policy was exported for.
        cameras: {key: (H, W, 3)} of every camera the robot has (a bare shape: the main camera's);
        camera_fix: how to give this robot a camera it lacks (the target knows)."""
        have = dict(cameras) if isinstance(cameras, Mapping) else {self.image_key: tuple(cameras)}
        problems = []
        missing = [key for key in self.image_keys if key not in have]
        if missing:
            problems.append(f"it has no camera {', '.join(missing)} (it has {sorted(have) or 'none'}), which the "
                            f"policy reads ({camera_fix or 'give it those cameras'})")
        for key, shape in self.cameras.items():
            if key in have and tuple(have[key]) != shape:
                problems.append(f"camera {key} gives {tuple(have[key])} images, the policy expects {shape} "
                                "(set the camera's resolution to match)")
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

    def act_on(self, observation: Mapping, embedding: np.ndarray) -> np.ndarray:
        """observation {"image/<camera>": uint8 (H, W, 3), ..., "state": (J,)} holding every camera in
        `image_keys`, embedding (1, 384) -> action (A,) float32, as act()."""
        missing = [key for key in self.image_keys if key not in observation]
        if missing:
            have = sorted(k for k in observation if k.startswith("image/"))
            raise BundleError(f"bundle {self.path} reads cameras {self.image_keys} and the observation lacks "
                              f"{missing} (it has {have}): give the robot those cameras")
        main, *extra = (observation[key] for key in self.image_keys)
        return self.act(main, observation["state"], embedding, extra)

    def act(self, image: np.ndarray, state: np.ndarray, embedding: np.ndarray,
            extra: Sequence[np.ndarray] = ()) -> np.ndarray:
        """image uint8 (H, W, 3) of the main camera, state (J,), embedding (1, 384), extra: one uint8
        frame per extra camera, in `image_keys[1:]` order -> action (A,) float32, state and action in the
        training data's units."""
        if len(extra) != len(self.image_keys) - 1:
            raise BundleError(f"bundle {self.path} reads cameras {self.image_keys}: act() got {1 + len(extra)} "
                              "frame(s); pass extra=[one frame per image_keys[1:]] or use act_on(observation, ...)")
        frame = lambda x: np.ascontiguousarray(x, np.uint8)[None]                     # (1, H, W, 3)
        state = self.normalizer.normalize("state", np.asarray(state, np.float32).reshape(-1))
        feeds = {"image": frame(image), "state": state.reshape(1, -1),
                 "instruction": np.asarray(embedding, np.float32).reshape(1, -1),
                 **{manifest_lib.input_name(k): frame(x) for k, x in zip(self.image_keys[1:], extra)},
                 **{s["name"]: x for s, x in zip(self.specs, self._carried)}}
        out = self.session.run(None, feeds)
        self._carried = out[1:]
        return self.normalizer.denormalize("action", np.asarray(out[0][0], np.float32))
