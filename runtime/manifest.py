"""manifest.json of a bundle: write it at export, verify it before a deployment moves anything.

Numpy and json only: the torch-free runtime imports this module. The manifest lists every other file
of the bundle with its size and sha256, so a truncated copy, a file swapped from another export or a
bit flip on an SD card is refused before the policy ever runs. The manifest itself is sealed by
manifest.json.sha256 beside it (`sha256sum` format), checked before the manifest is even parsed, so
a damaged or hand-edited manifest is refused too. The layout is documented in docs/bundle.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from reverie.errors import BundleError

FORMAT = "reverie-bundle/1"
MANIFEST = "manifest.json"
DIGEST = MANIFEST + ".sha256"
REQUIRED = ("policy.onnx", "text_encoder.onnx", "tokenizer.json")
REQUIRED_KEYS = ("format", "policy", "observation", "action", "control_hz", "state_tensors", "onnx",
                 "files", "robot")


def input_name(image_key: str) -> str:
    """The policy.onnx input of an extra camera: "image/wrist" -> "image_wrist" (the main camera is
    `image`, whatever its key, so single-camera bundles keep their interface)."""
    return image_key.replace("/", "_")


def cameras(manifest: dict) -> dict[str, tuple[int, ...]]:
    """{camera key: (H, W, 3)} of every camera the policy reads, the main one (`observation.image_key`)
    first, then `observation.extra_images` (absent in single-camera bundles)."""
    obs = manifest["observation"]
    return {obs["image_key"]: tuple(obs["image"]["shape"]),
            **{e["key"]: tuple(e["shape"]) for e in obs.get("extra_images", [])}}


def arm_config(manifest: dict) -> dict | None:
    """The servo arm's config the bundle was exported for (`robot.config`, written by `reverie export
    arm=NAME`); None for a bundle scaled for the simulator, which carries no arm config."""
    config = manifest["robot"].get("config")
    return config if isinstance(config, dict) else None


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write(bundle: Path, content: dict) -> Path:
    """Checksum every file in `bundle` (the manifest and its digest excepted) and write manifest.json
    and its digest atomically: the digest first, so a crash between the two leaves no manifest."""
    bundle = Path(bundle)
    files = {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size}
             for p in sorted(bundle.iterdir()) if p.is_file() and p.name not in (MANIFEST, DIGEST)
             and not p.name.endswith(".tmp")}
    missing = [name for name in REQUIRED if name not in files]
    if missing:
        raise BundleError(f"cannot write the manifest of {bundle}: {missing} missing (export did not finish)")
    manifest = {"format": FORMAT, **content, "files": files}
    text = json.dumps(manifest, indent=1).encode()
    _replace(bundle / DIGEST, _digest_line(text))
    _replace(bundle / MANIFEST, text)
    return bundle / MANIFEST


def seal(bundle: Path) -> Path:
    """Write the digest of the manifest.json now in `bundle` (export does this; tests use it to build
    bundles whose manifest is consistent but wrong, to reach the checks behind the digest)."""
    bundle = Path(bundle)
    return _replace(bundle / DIGEST, _digest_line((bundle / MANIFEST).read_bytes()))


def _digest_line(text: bytes) -> bytes:
    return f"{hashlib.sha256(text).hexdigest()}  {MANIFEST}\n".encode()


def _replace(path: Path, data: bytes) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def _check_digest(bundle: Path, text: bytes) -> None:
    """manifest.json must match manifest.json.sha256: checked before anything in it is believed."""
    path = bundle / DIGEST
    if not path.is_file():
        raise BundleError(f"{path} is missing, so {bundle}/{MANIFEST} cannot be checked (a bundle from an older "
                          "reverie, or an incomplete copy); copy the whole bundle folder again or re-run `reverie export`")
    try:
        expected = path.read_text().split()[0].lower()
    except (OSError, UnicodeDecodeError, IndexError):
        expected = ""
    digest = hashlib.sha256(text).hexdigest()
    if digest != expected:
        raise BundleError(f"{bundle}/{MANIFEST} fails its checksum (sha256 {digest[:12]}..., {DIGEST} says "
                          f"{expected[:12] or 'nothing readable'}...): it was edited or damaged after export; copy "
                          "the bundle again or re-run `reverie export` (limits are changed in the robot's arm "
                          "config, never in a bundle)")


def read(bundle: Path) -> dict:
    """Parse manifest.json once its digest matches, without checking the other files (see verify)."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"bundle {bundle} is not a folder; pass bundle=PATH of a folder written by "
                          "`reverie export policy=... out=PATH`")
    path = bundle / MANIFEST
    if not path.exists():
        raise BundleError(f"{path} is missing: {bundle} is not a complete bundle; re-run `reverie export`")
    text = path.read_bytes()
    _check_digest(bundle, text)
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON ({e}); the bundle is damaged, re-run `reverie export`") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{path}: format {got!r}, this runtime reads {FORMAT!r}; re-export the "
                          "policy with this version of reverie")
    absent = [k for k in REQUIRED_KEYS if k not in manifest]
    if absent:
        raise BundleError(f"{path} lacks {absent}; the bundle is damaged or hand-edited, re-run `reverie export`")
    return manifest


def check_fields(manifest: dict, bundle: Path) -> None:
    """Every field the runtime reads has the kind and range it needs (FIELDS): a manifest that passes
    its digest can still come from a buggy or hand-sealed export, and must fail here, naming the
    field, not in a traceback later."""
    path = Path(bundle) / MANIFEST
    for field, expected, fits in FIELDS:
        value = _get(manifest, field)
        if not fits(value):
            shown = "absent" if value is _ABSENT else json.dumps(value)[:60]
            raise BundleError(f"{path}: {field} is {shown}, expected {expected}; the bundle is damaged or "
                              "hand-edited, re-run `reverie export`")
    scales, actions = len(manifest["robot"]["action_scale"]), manifest["action"]["shape"][0]
    if scales != actions:
        raise BundleError(f"{path}: robot.action_scale has {scales} values for {actions} action values; the "
                          "bundle is damaged or hand-edited, re-run `reverie export`")
    main = manifest["observation"]["image_key"]
    if main in [e["key"] for e in manifest["observation"].get("extra_images", [])]:
        raise BundleError(f"{path}: observation.extra_images repeats the main camera {main!r}; the bundle is "
                          "damaged or hand-edited, re-run `reverie export`")


_ABSENT = object()


def _get(manifest: dict, field: str):
    value = manifest
    for key in field.split("."):
        if not isinstance(value, dict) or key not in value:
            return _ABSENT
        value = value[key]
    return value


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return (_int(v) or isinstance(v, float)) and v == v and abs(v) != float("inf")


def _dims(n: int):
    return lambda v: isinstance(v, list) and len(v) == n and all(_int(d) and d > 0 for d in v)


def _names(v) -> bool:
    return isinstance(v, list) and all(isinstance(n, str) and n for n in v)


def _camera_key(v) -> bool:
    return isinstance(v, str) and v.startswith("image/") and len(v) > len("image/")


def _image_shape(v) -> bool:
    return _dims(3)(v) and v[2] == 3


def _extra_images(v) -> bool:
    """Absent (a single-camera bundle) or one {key, shape} per extra camera, each its own ONNX input."""
    return v is _ABSENT or (isinstance(v, list) and all(isinstance(e, dict) and _camera_key(e.get("key"))
                                                        and _image_shape(e.get("shape")) for e in v)
                            and len({input_name(e["key"]) for e in v}) == len(v))


def _state_tensor(s) -> bool:
    return (isinstance(s, dict) and isinstance(s.get("name"), str) and _number(s.get("initial"))
            and isinstance(s.get("shape"), list) and all(_int(d) and d >= 0 for d in s["shape"]))


def _file_entry(e) -> bool:
    return isinstance(e, dict) and isinstance(e.get("sha256"), str) and _int(e.get("bytes")) and e["bytes"] >= 0


# The fields the runtime reads (check_fields), each with what it must be.
FIELDS = (
    ("observation.image_key", "a camera key like \"image/front\"", _camera_key),
    ("observation.image.shape", "[height, width, 3]", _image_shape),
    ("observation.extra_images", "absent (one camera) or a list of {\"key\": \"image/<camera>\", \"shape\": "
     "[height, width, 3]}, one per extra camera, no key twice", _extra_images),
    ("observation.state.shape", "[joints], one positive integer", _dims(1)),
    ("observation.instruction.max_chars", "a positive integer", lambda v: _int(v) and v > 0),
    ("action.shape", "[action values], one positive integer", _dims(1)),
    ("control_hz", "a rate in Hz in (0, 1000]", lambda v: _number(v) and 0 < v <= 1000),
    ("state_tensors", "a list of {name, shape, initial}", lambda v: isinstance(v, list) and all(map(_state_tensor, v))),
    ("onnx.policy.file", "a file name", lambda v: isinstance(v, str) and bool(v)),
    ("onnx.policy.inputs", "a list of input names", _names),
    ("onnx.policy.outputs", "a list of output names", _names),
    ("files", "{file name: {sha256, bytes}}", lambda v: isinstance(v, dict) and all(map(_file_entry, v.values()))),
    ("robot", "a mapping (the robot the bundle was exported for)", lambda v: isinstance(v, dict)),
    ("robot.name", "the name of the robot or arm config", lambda v: isinstance(v, str) and bool(v)),
    ("robot.action_mode", "\"delta\" or \"absolute\"", lambda v: v in ("delta", "absolute")),
    ("robot.action_scale", "a list of positive numbers, one per action value",
     lambda v: isinstance(v, list) and bool(v) and all(_number(x) and x > 0 for x in v)),
    ("normalization", "a mapping, or null for none", lambda v: v is _ABSENT or v is None or isinstance(v, dict)),
)


def verify(bundle: Path) -> dict:
    """The manifest, after checking that every listed file is present with its size and sha256, and
    that the files the runtime needs are listed. Raises BundleError naming the first problem."""
    return check_files(Path(bundle), read(bundle))


def check_files(bundle: Path, manifest: dict) -> dict:
    """verify's checks of the files a manifest lists."""
    files = manifest["files"]
    for name in REQUIRED:
        if name not in files:
            raise BundleError(f"{bundle}/{MANIFEST} does not list {name}; re-run `reverie export`")
    for name, entry in files.items():
        path = bundle / name
        if Path(name).name != name:  # a manifest must not point outside its bundle
            raise BundleError(f"{bundle}/{MANIFEST} lists {name!r}, which is not a plain file name")
        if not path.is_file():
            raise BundleError(f"bundle file {path} is missing; copy the whole bundle folder again or "
                              "re-run `reverie export`")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise BundleError(f"bundle file {path} has {size} bytes, the manifest says {entry['bytes']} "
                              "(truncated or replaced); copy the bundle again or re-run `reverie export`")
        digest = sha256(path)
        if digest != entry["sha256"]:
            raise BundleError(f"bundle file {path} fails its checksum (sha256 {digest[:12]}..., manifest "
                              f"{entry['sha256'][:12]}...): it was changed after export; copy the bundle "
                              "again or re-run `reverie export`")
    return manifest
