"""manifest.json of a bundle: write it at export, verify it before a deployment moves anything.

Numpy and json only: the torch-free runtime imports this module. The manifest lists every other file
of the bundle with its size and sha256, so a truncated copy, a file swapped from another export or a
bit flip on an SD card is refused before the policy ever runs. The layout is documented in
docs/bundle.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from reverie.errors import BundleError

FORMAT = "reverie-bundle/1"
MANIFEST = "manifest.json"
REQUIRED = ("policy.onnx", "text_encoder.onnx", "tokenizer.json")
REQUIRED_KEYS = ("format", "policy", "observation", "action", "control_hz", "state_tensors", "onnx",
                 "files", "robot")


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write(bundle: Path, content: dict) -> Path:
    """Checksum every file in `bundle` (the manifest excepted) and write manifest.json atomically."""
    bundle = Path(bundle)
    files = {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size}
             for p in sorted(bundle.iterdir()) if p.is_file() and p.name != MANIFEST}
    missing = [name for name in REQUIRED if name not in files]
    if missing:
        raise BundleError(f"cannot write the manifest of {bundle}: {missing} missing (export did not finish)")
    manifest = {"format": FORMAT, **content, "files": files}
    tmp = bundle / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(bundle / MANIFEST)
    return bundle / MANIFEST


def read(bundle: Path) -> dict:
    """Parse manifest.json, without checking files (see verify)."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"bundle {bundle} is not a folder; pass bundle=PATH of a folder written by "
                          "`reverie export policy=... out=PATH`")
    path = bundle / MANIFEST
    if not path.exists():
        raise BundleError(f"{path} is missing: {bundle} is not a complete bundle; re-run `reverie export`")
    try:
        manifest = json.loads(path.read_text())
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


def verify(bundle: Path) -> dict:
    """The manifest, after checking that every listed file is present with its size and sha256, and
    that the files the runtime needs are listed. Raises BundleError naming the first problem."""
    bundle = Path(bundle)
    manifest = read(bundle)
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
