"""`reverie export policy=CHECKPOINT out=BUNDLE [arm=sim|<arm config>] [data=STORE]`: write a bundle.

    policy.onnx        one control step (export/policy_module.py), batch 1, opset >= 18
    text_encoder.onnx  MiniLM + mean pooling + L2 norm; input_ids/attention_mask int64 (N, L)
    tokenizer.json     the encoder's tokenizer (from reverie.language.model_dir())
    manifest.json      specs, action scaling, joint limits, control rate, state tensors, versions,
                       the state/action normaliser, parity errors, sha256 of every file
                       (runtime/manifest.py, docs/bundle.md)

The graph works in the model's units (normalised state in, action in [-1, 1] out); the manifest's
`normalization` (reverie/normalize.py JSON, the policy checkpoint's) lets the runtime map the robot's
state in and the action back to the training data's units (runtime/bundle.py).

The export verifies itself before it writes the manifest: over `parity_steps` recorded rows the
ONNX actions must match PyTorch within `tolerance`, and so must the instruction embeddings; otherwise
it fails and leaves no manifest, so the runtime refuses the half-written folder.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import logging
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from reverie.config import command_config, compose
from reverie.errors import BundleError, ConfigError
from reverie.runtime import manifest as manifest_lib
from reverie.export import parity
from reverie.export.policy_module import AgentStep, PolicyStep, ScratchStep

log = logging.getLogger(__name__)

# onnxruntime >= 1.16 reads IR version 10 (ONNX 1.16); newer exporters may write a later IR that an
# older robot-side runtime rejects, so the bundle pins it.
IR_VERSION = 10
PACKAGES = ("reverie", "torch", "onnx", "onnxruntime", "onnxscript", "tokenizers", "numpy")


# ----- loading the policy -----------------------------------------------------------------------
def load_policy(path: Path) -> tuple[object, Callable[[tuple[int, int], dict], PolicyStep], dict]:
    """-> (PyTorch controller, (main image (H, W), {extra camera key: (H, W)}) -> step module, info)
    for an agent or scratch_bc folder."""
    from reverie.policy.loading import load_controller

    controller = load_controller(path)
    if hasattr(controller, "wm"):
        from reverie.policy import checkpoint

        _, info = checkpoint.load(path if (path / "agent.json").exists() else path / "agent")
        wm = controller.wm
        # Deterministic latents: argmax categories (RSSM) / noise-free context (shortcut).
        wm.deterministic = True
        if wm.onnx_step is None:  # the backend's own exported step (world_model/backend.py)
            from reverie.world_model.backend import load_backends

            exportable = sorted(name for name, cls in load_backends().items() if cls.onnx_step is not None)
            raise BundleError(f"world-model backend {info['backend']!r} has no exporter; "
                              f"exportable backends: {exportable}")
        # An agent reads its world model's cameras: the main one, then its spec's extra ones (train-wm cameras=).
        return controller, lambda hw, extra: AgentStep(wm, controller.agent, hw, extra).ensemble(*_ensemble(controller)), \
            {**info, "kind": info["backend"], "image_keys": controller.image_keys}
    import json

    info = json.loads((path / "scratch_bc.json").read_text())
    return controller, lambda hw, extra: ScratchStep(controller.policy, hw, extra).ensemble(*_ensemble(controller)), \
        {**info, "kind": "scratch_bc"}


def _ensemble(controller) -> tuple[int, float | None]:
    """The controller's chunk execution (policy/ensemble.py), for the graph to repeat."""
    e = controller.ensemble
    return e.chunk, (e.decay if e.on else None)


def parity_stores(cfg, info: dict) -> list:
    from reverie.world_model.data import data_paths, open_stores

    data = cfg.data or info.get("stores")
    if not data:
        raise ConfigError("the parity check needs recorded episodes and this checkpoint names no "
                          "training stores: pass data=STORE")
    return open_stores(data_paths(data))


def camera_shapes(stores, image_keys: list[str]) -> dict[str, tuple[int, ...]]:
    """{key: (H, W, 3)} of every camera the policy reads, from the stores' schemas (the resolution the
    bundle takes); ConfigError naming a camera a store lacks or records at another resolution."""
    shapes = {}
    for key in image_keys:
        for store in stores:
            if key not in store.schema:
                raise ConfigError(f"{store} has no camera {key!r} (keys {sorted(store.schema)}), which the policy "
                                  "reads; pass data= with the stores the policy was trained on")
            shape = shapes.setdefault(key, tuple(store.schema[key].shape))
            if tuple(store.schema[key].shape) != shape:
                raise ConfigError(f"{store} records {key!r} at {tuple(store.schema[key].shape)}, another store at "
                                  f"{shape}; a bundle takes one resolution per camera: pass data= with stores that agree")
    return shapes


# ----- robot: action scaling, joint limits, rate ------------------------------------------------
# arm= names that are not arm configs: name -> "module:function(control_hz) -> the manifest's robot
# section", imported on use; their rate defaults to the store's. Any other name is an arm config.
TARGETS = {"sim": "reverie.sim.arm_env:bundle_robot"}


def robot_section(cfg, store) -> dict:
    """What the actions mean on the target: the sim arm's ArmEnvConfig, or a robot_io arm config."""
    name = str(cfg.arm)
    if name in TARGETS:
        module, func = TARGETS[name].split(":")
        return getattr(importlib.import_module(module), func)(float(cfg.control_hz or store.fps))
    return arm_config_section(name, cfg.control_hz)


def arm_config_section(name: str, control_hz: float | None) -> dict:
    """A robot_io arm config's action scaling, limits and rate (its own control_hz unless given)."""
    from omegaconf import OmegaConf

    from reverie.robot_io.config import arm_from_mapping

    raw = OmegaConf.to_container(compose("arm", [f"robot={name}"]).robot, resolve=True)
    arm = arm_from_mapping(raw)
    hz = float(control_hz or arm.control_hz)
    raw["control_hz"] = hz
    return {"kind": "arm", "name": arm.name, "protocol": arm.protocol, "joint_names": arm.names,
            "action_mode": arm.action_mode, "action_scale": arm.vector("action_scale").tolist(),
            "action_units": "joint radians (gripper: opening) per control step at action 1.0",
            "joint_limits": {"lower": arm.lower.tolist(), "upper": arm.upper.tolist()},
            "max_step": arm.vector("max_step").tolist(), "max_velocity": arm.vector("max_velocity").tolist(),
            "control_hz": hz, "config": raw}


def check_units(normalizer, robot: dict, action_dim: int) -> bool:
    """The sim and robot_io targets take normalised commands in [-1, 1] (`robot.action_units`); warn
    when the policy's actions, in its training data's units, range well outside that."""
    bounds = normalizer.bounds("action", action_dim)
    if bounds is None or normalizer.mode("action") == "identity":
        return False
    low, high = bounds
    if float((high - low).max()) <= 2.2 and low.min() >= -1.1 and high.max() <= 1.1:
        return False
    log.warning("the policy's actions are in its training data's units (%s..%s per dimension) but %s takes "
                "%s in [-1, 1]: the runtime will clip them. Export for the robot the data was recorded on, "
                "or train on data recorded with its normalised commands", np.round(low, 3).tolist(),
                np.round(high, 3).tolist(), robot["name"], robot.get("action_units", "normalised commands"))
    return True


# ----- writing the graphs -----------------------------------------------------------------------
def _save(program, path: Path) -> None:
    import onnx

    program.save(str(path))
    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_policy(step: PolicyStep, path: Path, opset: int) -> None:
    step.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(step, step.example_inputs(), input_names=step.input_names(),
                                    output_names=step.output_names(), dynamo=True, opset_version=opset,
                                    verbose=False)
    _save(program, path)


class _Encoder(torch.nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder, self.model = encoder, encoder.model  # registered, so export sees the weights

    def forward(self, input_ids, attention_mask):
        return self.encoder.forward(input_ids, attention_mask)  # (N, 384) pooled, unit norm


def export_text_encoder(path: Path, opset: int, cache: Path | None) -> None:
    """The sentence encoder with dynamic batch and length. The graph depends only on the packaged
    weights and the exporter, so a copy keyed by both is reused (each export re-checks its parity)."""
    from reverie.language import default_encoder, model_dir

    weights = model_dir() / "model.safetensors"
    key = f"{manifest_lib.sha256(weights)[:16]}-torch{torch.__version__}-opset{opset}.onnx"
    if cache is not None and (cache / key).exists():
        shutil.copyfile(cache / key, path)
        return
    enc = default_encoder()
    batch = enc.tokenizer(["pick up the red cube", "push"], padding=True, return_tensors="pt")
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("length", max=512)}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            _Encoder(enc).eval(), (batch["input_ids"], batch["attention_mask"]),
            input_names=["input_ids", "attention_mask"], output_names=["sentence_embedding"],
            dynamic_shapes={"input_ids": dims, "attention_mask": dims}, dynamo=True,
            opset_version=opset, verbose=False)
    _save(program, path)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / (key + ".tmp")
        shutil.copyfile(path, tmp)
        tmp.replace(cache / key)


def versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def manifest_content(step: PolicyStep, info: dict, policy_path: Path, image_key: str, image_shape,
                     robot: dict, opset: int, max_chars: int, parity_json: dict, normalizer=None) -> dict:
    """Everything manifest.json says besides its format and file checksums (docs/bundle.md)."""
    from reverie.normalize import Normalizer

    normalizer = normalizer if normalizer is not None else Normalizer()
    low, high = normalizer.bounds("action", step.action_dim)               # the action's range, data units
    uniform = normalizer.mode("action") == "identity"
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "policy": {"kind": info["kind"], "checkpoint": str(Path(policy_path).resolve()),
                   "world_model": info.get("world_model"), "stage": info.get("stage"),
                   "steps": info.get("steps"), "model_image_size": int(step.size)},
        "observation": {"image_key": image_key,
                        "image": {"shape": list(image_shape), "dtype": "uint8"},
                        "state": {"shape": [step.state_dim], "dtype": "float32"},
                        "instruction": {"max_chars": max_chars, "embedding_dim": 384, "max_tokens": 128},
                        # only multi-camera policies write it: single-camera manifests stay as they were
                        **({"extra_images": [{"key": key, "shape": [*hw, 3], "dtype": "uint8"}
                                             for key, hw in step.extra_hw.items()]} if step.extra_hw else {})},
        "action": {"shape": [step.action_dim], "dtype": "float32",
                   "minimum": -1.0 if uniform else low.tolist(), "maximum": 1.0 if uniform else high.tolist()},
        "normalization": normalizer.to_json(),
        "control_hz": robot["control_hz"],
        "robot": robot,
        "state_tensors": [s.to_json() for s in step.state_specs()],
        "onnx": {"policy": {"file": "policy.onnx", "inputs": step.input_names(),
                            "outputs": step.output_names()},
                 "text_encoder": {"file": "text_encoder.onnx", "inputs": ["input_ids", "attention_mask"],
                                  "outputs": ["sentence_embedding"]},
                 "opset": opset, "ir_version": IR_VERSION},
        "parity": parity_json,
        "versions": versions(),
    }


# ----- the command ------------------------------------------------------------------------------
def export(cfg) -> Path:
    if cfg.policy in (None, "???") or cfg.out in (None, "???"):
        raise ConfigError("pass policy=CHECKPOINT (an agent or scratch_bc folder) and out=BUNDLE")
    if int(cfg.opset) < 18:
        raise ConfigError(f"opset={cfg.opset}: the exporter needs opset 18 or later")
    hz = cfg.control_hz  # null default: hydra cannot check its kind
    if hz is not None and not (isinstance(hz, (int, float)) and not isinstance(hz, bool) and 0 < hz <= 1000):
        raise ConfigError(f"control_hz={hz}: give a rate in Hz in (0, 1000], or null for the arm's or store's")
    if int(cfg.parity_steps) < 1 or not float(cfg.tolerance) > 0 or int(cfg.threads) < 0:
        raise ConfigError(f"parity_steps={cfg.parity_steps}, tolerance={cfg.tolerance}, threads={cfg.threads}: "
                          "export checks parity over at least 1 step within a positive tolerance, threads >= 0")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    for name in ("onnx_ir", "onnxscript"):  # their per-pass INFO lines would bury ours
        logging.getLogger(name).setLevel(logging.WARNING)
    policy_path, out = Path(cfg.policy), Path(cfg.out)
    controller, make_step, info = load_policy(policy_path)
    image_key = str(info["image_key"])
    image_keys = [str(k) for k in info.get("image_keys") or [image_key]]  # main first; older: main only
    stores = parity_stores(cfg, info)
    shapes = camera_shapes(stores, image_keys)                              # {key: (H, W, 3)}
    image_shape = shapes[image_key]
    step = make_step(image_shape[:2], {key: shapes[key][:2] for key in image_keys[1:]})
    robot = robot_section(cfg, stores[0])
    if len(robot["joint_names"]) != step.action_dim:
        raise ConfigError(f"arm={cfg.arm} has {len(robot['joint_names'])} joints, the policy "
                          f"acts on {step.action_dim}; pass the arm the policy was trained for")
    from reverie.normalize import Normalizer

    normalizer = getattr(controller, "normalizer", None) or Normalizer()      # the checkpoint's units
    check_units(normalizer, robot, step.action_dim)

    if out.exists():
        if not cfg.overwrite:
            raise ConfigError(f"{out} exists; pass overwrite=true or another out=")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    log.info("exporting %s policy to %s", info["kind"], out / "policy.onnx")
    export_policy(step, out / "policy.onnx", int(cfg.opset))
    log.info("exporting the instruction encoder")
    cache = Path(str(cfg.encoder_cache)).expanduser() if cfg.encoder_cache else None
    export_text_encoder(out / "text_encoder.onnx", int(cfg.opset), cache)
    from reverie.language import model_dir
    shutil.copyfile(model_dir() / "tokenizer.json", out / "tokenizer.json")

    tol = float(cfg.tolerance)
    log.info("parity check over %d recorded steps", int(cfg.parity_steps))
    action_err, rows, n_eps, texts = parity.action_parity(
        controller, step, out / "policy.onnx", stores, image_keys, int(cfg.parity_steps))
    embed_err = parity.embedding_parity(out, texts)
    result = parity.ParityResult(rows, n_eps, action_err, embed_err, len(texts))
    if rows < int(cfg.parity_steps):
        raise BundleError(f"parity check: the stores hold only {rows} rows, {cfg.parity_steps} asked; "
                          "record more episodes or lower parity_steps (no manifest written)")
    if not (action_err <= tol and embed_err <= tol):
        raise BundleError(f"parity check failed: max action error {action_err:.3g}, max embedding error "
                          f"{embed_err:.3g}, tolerance {tol:g} over {rows} steps; the bundle in {out} "
                          "has no manifest and will be refused. Report this with the checkpoint.")
    content = manifest_content(step, info, policy_path, image_key, image_shape, robot, int(cfg.opset),
                               int(cfg.max_instruction_chars), result.to_json(tol), normalizer)
    manifest_lib.write(out, content)
    extra = "".join(f", {k} {shapes[k][0]}x{shapes[k][1]}" for k in image_keys[1:])
    print(f"bundle {out}: {info['kind']} policy, image {image_shape[0]}x{image_shape[1]}{extra}, "
          f"{robot['control_hz']:g} Hz, parity over {rows} steps: action {action_err:.2e}, "
          f"embedding {embed_err:.2e} (tolerance {tol:g})")
    return out


def main(argv: list[str]) -> int:
    cfg = command_config("export", argv, __doc__)
    if cfg is not None:
        export(cfg)
    return 0
