"""Bad input a user can give, across the CLI, command configs, calibration files, arm YAMLs, stores,
checkpoints and bundles: each must end in exit status 2 and one line `error: ...` that names the
problem and the fix, with no traceback anywhere in the output, and nothing committed lost.

Every case runs in-process through `reverie.cli.main`, so the corpus takes seconds. Nothing trains:
budgets that cannot run are refused before anything loads, the world-model checkpoint is a step-0
save of a tiny model, and bundles are manifests alone (each case fails before the ONNX files matter).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from reverie.cli import main

GARBAGE = bytes(range(256)) * 4
DEPLOY = ("robot=sim", "instruction=touch the red cube", "stdin=false")
# A manifest as `reverie export` writes it (tests/export_setup.py's quick bundle), for the checks that
# run before any file of the bundle is opened.
MANIFEST = {
    "format": "reverie-bundle/1",
    "policy": {"kind": "scratch_bc", "checkpoint": "scratch"},
    "observation": {"image_key": "image/front", "image": {"shape": [64, 64, 3], "dtype": "uint8"},
                    "state": {"shape": [6], "dtype": "float32"},
                    "instruction": {"max_chars": 512, "embedding_dim": 384, "max_tokens": 128}},
    "action": {"shape": [6], "dtype": "float32", "minimum": -1.0, "maximum": 1.0},
    "normalization": {"format": "reverie-normalizer/1", "keys": {}},
    "control_hz": 10.0,
    "robot": {"kind": "sim", "name": "sim/so101", "action_mode": "delta", "action_scale": [0.05] * 6},
    "state_tensors": [],
    "onnx": {"policy": {"file": "policy.onnx", "inputs": ["image", "state", "instruction"], "outputs": ["action"]}},
    "files": {name: {"sha256": "0" * 64, "bytes": 1}
              for name in ("policy.onnx", "text_encoder.onnx", "tokenizer.json")},
}
ARM_JOINT = "{name: a, id: 1, model: sts3215, limits: [-1, 1], max_velocity: 1, max_step: 0.1, action_scale: 0.05}"


class World:
    """The shared, read-only artefacts (a store, a step-0 world model, a scratch-BC policy) and a
    fresh folder per case for the damaged copies it makes."""

    def __init__(self, shared: dict, tmp: Path):
        self.store, self.wm_run, self.scratch_dir, self.tmp = shared["store"], shared["wm"], shared["scratch"], tmp

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def calibration(self, data) -> Path:
        return self.file("calib.json", data if isinstance(data, bytes) else json.dumps(data))

    def bundle(self, change: Callable[[dict], object] | None = None, seal: bool = True) -> Path:
        from reverie.runtime import manifest

        folder = self.tmp / "bundle"
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps(MANIFEST))
        manifest.seal(folder)  # as export leaves it
        if change:
            m = json.loads(json.dumps(MANIFEST))
            change(m)
            (folder / "manifest.json").write_text(json.dumps(m))
            if seal:  # as a tamperer or a buggy export could: only the checks behind the digest see it
                manifest.seal(folder)
        return folder

    def wm(self, change: Callable[[Path], object]) -> Path:
        run = Path(shutil.copytree(self.wm_run, self.tmp / "wm"))
        change(run / "checkpoint")
        return run

    def scratch(self, change: Callable[[Path], object]) -> Path:
        folder = Path(shutil.copytree(self.scratch_dir, self.tmp / "scratch"))
        change(folder)
        return folder

    def store_copy(self, change: Callable[[Path], object]) -> Path:
        store = Path(shutil.copytree(self.store, self.tmp / "copy.zarr"))
        change(store)
        return store

    def agent(self, info) -> Path:
        """An agent folder with this agent.json and garbage for weights."""
        folder = self.tmp / "agent"
        folder.mkdir()
        (folder / "agent.json").write_text(json.dumps(info))
        (folder / "agent.safetensors").write_bytes(GARBAGE)
        return folder


@dataclasses.dataclass
class Case:
    id: str
    argv: Callable[[World], list[str]]
    problem: str                                     # regex naming what is wrong
    fix: str                                         # regex naming what to do
    patch: Callable | None = None                    # (monkeypatch) before the command
    then: Callable[[World], object] | None = None    # more checks after it


def garble(files: str) -> Callable[[Path], None]:
    """A change to a store: overwrite the files matching the glob (chunks or metadata) with garbage."""
    return lambda store: [p.write_bytes(GARBAGE) for p in store.glob(files) if p.is_file()]


def disk_error(code: int) -> Callable:
    """The disk refuses every write (full: ENOSPC, read-only: EROFS), as zarr's LocalStore meets it."""
    def patch(monkeypatch):
        from zarr.storage import LocalStore

        async def refuse(self, key, value, *args, **kwargs):
            raise OSError(code, os.strerror(code))
        monkeypatch.setattr(LocalStore, "set", refuse)
    return patch


def absent(path: Callable[[World], Path]) -> Callable[[World], None]:
    def check(w):
        assert not path(w).exists(), f"{path(w)} was left behind"
    return check


def deploy(bundle: Path | str, *extra: str) -> list[str]:
    return ["deploy", f"bundle={bundle}", *DEPLOY, *extra]


def record(w: World, *extra: str) -> list[str]:
    return ["record", "instruction=wave", f"out={w.tmp / 'rec.zarr'}", "start=auto", *extra]


def train_wm(w: World, *extra: str, data: Path | None = None) -> list[str]:
    return ["train-wm", f"data={data or w.store}", "preset=tiny", f"out={w.tmp / 'run'}", "device=cpu",
            "progress=false", *extra]


def arm(w: World, text: str) -> list[str]:
    return record(w, f"robot_file={w.file('arm.yaml', text)}")


def one_joint(old: str, new: str) -> str:
    """An arm YAML on the virtual SO-101 with one joint, one of its settings replaced."""
    return f"defaults: [so101_virtual]\njoints:\n  - {ARM_JOINT.replace(old, new)}\n"


def info(w: World, change: Callable[[Path], object]) -> list[str]:
    return ["data", "info", str(w.store_copy(change))]


def eval_wm(w: World, change: Callable[[Path], object]) -> list[str]:
    return ["eval-wm", f"checkpoint={w.wm(change)}", "device=cpu"]


def put(name: str, content: str | bytes) -> Callable[[Path], None]:
    """A change to a checkpoint or store folder: replace one of its files."""
    return lambda folder: (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())


def remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def truncate(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:4000])


DELETE = object()


def edit(path: str, value) -> Callable[[dict], None]:
    """A manifest change: set (or, with value DELETE, remove) the dotted field."""
    def change(m):
        *parents, leaf = path.split(".")
        for key in parents:
            m = m[key]
        if value is DELETE:
            del m[leaf]
        else:
            m[leaf] = value
    return change


RE_EXPORT = r"re-run `reverie export`"
AGAIN = "restore the folder from a copy or train it again"

CASES = [
    # ---- the CLI: deploy's own key=value parser, and the command table
    Case("deploy socket=99999", lambda w: deploy("unused", "socket=99999"), r"socket='99999'", r"port number 0-65535"),
    Case("deploy socket=abc", lambda w: deploy("unused", "socket=abc"), r"socket='abc'", r"port number 0-65535"),
    Case("deploy socket=-1", lambda w: deploy("unused", "socket=-1"), r"socket='-1'", r"0: any free port"),
    Case("deploy threads=-3", lambda w: deploy("unused", "threads=-3"), r"threads=-3", r"at least 1"),
    Case("deploy threads=abc", lambda w: deploy("unused", "threads=abc"), r"threads='abc'", r"must be an integer"),
    Case("deploy episodes=abc", lambda w: deploy("unused", "episodes=abc"), r"episodes='abc'", r"must be an integer"),
    Case("deploy steps=0", lambda w: deploy("unused", "steps=0"), r"steps=0", r"at least 1"),
    Case("deploy report= into a missing folder", lambda w: deploy("unused", f"report={w.tmp / 'no' / 'r.json'}"),
         r"folder \S+/no does not exist", r"create it first or pick another path",
         then=absent(lambda w: w.tmp / "no")),
    Case("deploy report= a folder", lambda w: deploy("unused", f"report={w.tmp}"), r"is a folder",
         r"pass a file path, e.g. report=\S+/report.json"),
    Case("deploy robot=moon", lambda w: ["deploy", "bundle=b", "robot=moon", "instruction=x"], r"robot='moon'",
         r"choose one of sim, virtual, feetech, dynamixel"),
    Case("deploy robot= mistyped", lambda w: ["deploy", "bundle=b", "robot=feetch", "instruction=x"],
         r"robot='feetch'", r"did you mean feetech\?"),
    Case("deploy option mistyped", lambda w: deploy("unused", "epsiodes=3"), r"unknown option 'epsiodes'",
         r"did you mean episodes\?"),
    Case("deploy --cfg of another kind", lambda w: deploy("unused", "--cfg", "hydra"), r"--cfg hydra",
         r"pass --cfg job"),
    Case("deploy unknown option", lambda w: deploy("unused", "speed=fast"), r"unknown option 'speed'",
         r"deploy takes arm, bundle"),
    Case("deploy positional word", lambda w: ["deploy", "mybundle"], r"unexpected argument 'mybundle'",
         r"takes key=value options"),
    Case("deploy without bundle=", lambda w: ["deploy", "robot=sim"], r"missing bundle=", r"usage: reverie deploy"),
    Case("unknown command", lambda w: ["fly", "away"], r"unknown command 'fly'",
         r"commands: data info, .*deploy, pipeline, completion \(`reverie --help` says what each does\)"),
    Case("command mistyped", lambda w: ["trian-wm", "preset=tiny"], r"unknown command 'trian-wm'",
         r"did you mean `reverie train-wm`\?"),
    Case("group subcommand mistyped", lambda w: ["data", "inf", "x.zarr"], r"unknown command 'data inf'",
         r"did you mean `reverie data info`\?"),
    Case("completion for another shell", lambda w: ["completion", "fish"], r"got fish", r"bash or zsh"),
    # ---- command configs (hydra overrides)
    Case("record episodes=abc", lambda w: record(w, "episodes=abc"), r"episodes=abc .*takes a number",
         r"e\.g\. episodes=1"),
    Case("record teleop= mistyped", lambda w: record(w, "teleop=keybord"), r"teleop='keybord'",
         r"one of keyboard, leader \(did you mean keyboard\?\)"),
    Case("record fps=abc", lambda w: record(w, "fps=abc"), r"fps=abc .*takes a number", r"e\.g\. fps=30"),
    Case("record episodes=null", lambda w: record(w, "episodes=null"), r"episodes=null .*takes a number",
         r"e\.g\. episodes=1"),
    Case("record episode_s=abc", lambda w: record(w, "episode_s=abc"), r"episode_s=abc", r"e\.g\. episode_s=30"),
    Case("sim demos image_size=64", lambda w: ["sim", "demos", "image_size=64", f"out={w.tmp / 'd.zarr'}"],
         r"image_size=64 .*takes a list of numbers", r"e\.g\. image_size=\[64, 64\]"),
    Case("sim demos image_size=[a,b]", lambda w: ["sim", "demos", "image_size=[a,b]", f"out={w.tmp / 'd.zarr'}"],
         r"image_size=\[a, b\]", r"e\.g\. image_size=\[64, 64\]"),
    Case("sim demos cameras=front", lambda w: ["sim", "demos", "cameras=front", f"out={w.tmp / 'd.zarr'}"],
         r"cameras=front .*takes a list", r"e\.g\. cameras=\[front\]"),
    Case("sim demos skill=abc", lambda w: ["sim", "demos", "skill=abc", f"out={w.tmp / 'd.zarr'}"],
         r"skill=abc .*takes a number", r"e\.g\. skill=1\.0"),
    Case("eval env_kwargs=abc", lambda w: ["eval", "policy=p", "env_kwargs=abc"], r"env_kwargs=abc .*takes a mapping",
         r"e\.g\. env_kwargs=\{\}"),
    Case("train-agent flag=yes", lambda w: ["train-agent", "wm=w", "rewards.dllm.enabled=yes"],
         r"rewards\.dllm\.enabled=yes .*takes true or false", r"e\.g\. rewards\.dllm\.enabled=false"),
    Case("train-wm steps=-5", lambda w: train_wm(w, "steps=-5"), r"steps=-5: train at least one step",
         r"e\.g\. steps=1000", then=absent(lambda w: w.tmp / "run")),
    Case("train-wm augment.mirror=2", lambda w: train_wm(w, "augment.mirror=2.0"), r"augment\.mirror=2\.0",
         r"a probability in \[0, 1\] \(0: off\)"),
    Case("train-agent bc.colour_swap=-1", lambda w: ["train-agent", f"wm={w.wm_run}", "stage=bc", "bc.colour_swap=-1.0",
                                                      f"out={w.tmp / 'a'}", "progress=false"],
         r"bc\.colour_swap=-1\.0", r"a probability in \[0, 1\] \(0: off\)"),
    Case("train-wm steps=abc", lambda w: train_wm(w, "steps=abc"), r"steps=abc must be a number", r"or null"),
    Case("train-wm minutes=abc", lambda w: train_wm(w, "minutes=abc"), r"minutes=abc must be a number", r"or null"),
    Case("train-wm minutes=0", lambda w: train_wm(w, "minutes=0"), r"minutes=0 must be positive",
         r"or null for no time cap"),
    Case("train-wm log_every=0", lambda w: train_wm(w, "log_every=0"), r"log_every=0", r"must be at least 1"),
    Case("train-wm threads=-1", lambda w: train_wm(w, "threads=-1"), r"threads=-1", r"must be at least 0"),
    Case("train-wm batch of 0", lambda w: train_wm(w, "preset.rssm.batch_size=0"), r"preset\.rssm\.batch_size=0",
         r"must be at least 1"),
    Case("train-wm without data=", lambda w: ["train-wm", "preset=tiny"], r"missing data=\.\.\.", r"--help"),
    Case("train-wm unknown key", lambda w: train_wm(w, "colour=9"), r"`train_wm` has no key 'colour'",
         r"run the command with --help to see its keys"),
    Case("eval key mistyped", lambda w: ["eval", "polcy=runs/bc"], r"`eval` has no key 'polcy'",
         r"did you mean policy=runs/bc\?"),
    Case("train-agent nested key mistyped", lambda w: ["train-agent", "wm=w", "bc.setps=3"],
         r"has no key 'bc\.setps'", r"did you mean bc\.steps=3\?"),
    Case("eval env option without +", lambda w: ["eval", "policy=p", "env_kwargs.time_limit=5"],
         r"env_kwargs starts empty", r"pass \+env_kwargs\.time_limit=5"),
    Case("train-wm unknown preset", lambda w: train_wm(w, "preset=huge"), r"`train_wm` has no preset 'huge'",
         r"options: cpu, l, m, s, tiny"),
    Case("train-wm preset mistyped", lambda w: train_wm(w, "preset=tny"), r"has no preset 'tny'",
         r"did you mean tiny\?"),
    Case("record arm config mistyped", lambda w: record(w, "robot=so10"), r"has no robot 'so10'",
         r"did you mean so101\?"),
    Case("eval --cfg of another kind", lambda w: ["eval", "--cfg", "hydra"], r"--cfg hydra", r"pass --cfg job"),
    Case("eval stray word with --cfg job", lambda w: ["eval", "runs/bc", "--cfg", "job"],
         r"unexpected arguments \['runs/bc'\]", r"takes key=value overrides"),
    Case("train-wm bad grammar", lambda w: train_wm(w, "steps=[1"), r"no viable alternative at input '\[1'",
         r"overrides are key=value"),
    Case("train-agent steps=-1", lambda w: ["train-agent", "wm=w", "steps=-1"], r"steps=-1: train at least one",
         r"e\.g\. steps=1500"),
    Case("train-agent stage=dance", lambda w: ["train-agent", "wm=w", "stage=dance"], r"stage='dance'",
         r"choose one of \['bc', 'bc_scratch', 'rl'\]"),
    Case("train-agent stage mistyped", lambda w: ["train-agent", "wm=w", "stage=bc_scrach"], r"stage='bc_scrach'",
         r"did you mean bc_scratch\?"),
    Case("eval env family mistyped", lambda w: ["eval", "policy=p", "env=amr/touch"],
         r"unknown environment 'amr/touch' \(did you mean arm\?\)", r"use <family>/<task>"),
    Case("sim demos task mistyped", lambda w: ["sim", "demos", "task=tuch", f"out={w.tmp / 'd.zarr'}"],
         r"unknown arm task 'tuch'", r"did you mean touch\?"),
    Case("export parity_steps=-1", lambda w: ["export", "policy=p", f"out={w.tmp / 'b'}", "parity_steps=-1"],
         r"parity_steps=-1", r"at least 1 step"),
    Case("export control_hz=abc", lambda w: ["export", "policy=p", f"out={w.tmp / 'b'}", "control_hz=abc"],
         r"control_hz=abc", r"rate in Hz in \(0, 1000\], or null"),
    Case("export without policy= out=", lambda w: ["export"], r"missing out=\.\.\. policy=\.\.\.", r"--help"),
    # ---- calibration files (calibration= of record and deploy)
    Case("calibration binary", lambda w: record(w, f"calibration={w.calibration(GARBAGE)}"), r"is not valid JSON",
         r"calibrate again \(`reverie robot calibrate out="),
    Case("calibration empty", lambda w: record(w, f"calibration={w.calibration(b'')}"), r"is not valid JSON",
         r"calibrate again"),
    Case("calibration a list", lambda w: record(w, f"calibration={w.calibration([1, 2, 3])}"),
         r"has no `joints` mapping", r"calibrate again"),
    Case("calibration joint a number", lambda w: record(w, "calibration=" + str(w.calibration(
        {"joints": {"elbow_flex": 5}}))),
         r"bad entry for joint 'elbow_flex' \(5\)", r"expected zero_ticks and range_ticks \[low, high\]"),
    Case("calibration range of 3", lambda w: record(w, "calibration=" + str(w.calibration(
        {"joints": {"elbow_flex": {"zero_ticks": 2048, "range_ticks": [1, 2, 3]}}}))),
         r"bad entry for joint 'elbow_flex'", r"calibrate again"),
    Case("calibration ticks as text", lambda w: record(w, "calibration=" + str(w.calibration(
        {"joints": {"gripper": {"zero_ticks": "2048", "range_ticks": [100, 3000]}}}))),
         r"bad entry for joint 'gripper'", r"whole ticks 0\.\.4095"),
    Case("calibration ticks past 4095", lambda w: record(w, "calibration=" + str(w.calibration(
        {"joints": {"gripper": {"zero_ticks": 5000, "range_ticks": [100, 3000]}}}))),
         r"bad entry for joint 'gripper'", r"whole ticks 0\.\.4095"),
    Case("calibration a folder", lambda w: record(w, f"calibration={w.tmp}"), r"calibration=\S+ is a folder",
         r"pass the calibration JSON file"),
    Case("calibration missing", lambda w: record(w, f"calibration={w.tmp / 'none.json'}"), r"not found",
         r"run `reverie robot calibrate out="),
    Case("calibration for another arm", lambda w: record(w, "calibration=" + str(w.calibration(
        {"joints": {"elbow_flex": {"zero_ticks": 2048, "range_ticks": [100, 3000]}}}))),
         r"no entry for joints \['shoulder_pan'", r"Run `reverie robot calibrate` for this one"),
    # ---- arm YAMLs (robot_file= of record, arm= of deploy)
    Case("arm YAML a list", lambda w: arm(w, "- 1\n- 2\n"), r"holds a list, not a mapping",
         r"start it with `defaults: \[<arm name>\]`"),
    Case("arm YAML binary", lambda w: record(w, f"robot_file={w.file('arm.yaml', GARBAGE)}"), r"is not valid YAML",
         r"fix or replace the file"),
    Case("arm YAML syntax", lambda w: arm(w, "joints: [\n"), r"is not valid YAML", r"fix or replace the file"),
    Case("arm YAML a folder", lambda w: record(w, f"robot_file={w.tmp}"), r"is a folder", r"pass the arm YAML file"),
    Case("arm joint id abc", lambda w: arm(w, one_joint("id: 1", "id: abc")),
         r"joint 'a': id='abc' must be a number", r"fix it in the arm YAML"),
    Case("arm max_step fast", lambda w: arm(w, one_joint("max_step: 0.1", "max_step: fast")),
         r"joint 'a': max_step='fast' must be a number", r"fix it in the arm YAML"),
    Case("arm joints a mapping", lambda w: arm(w, "defaults: [so101_virtual]\njoints: {a: 1}\n"),
         r"`joints` must be a list of mappings", r"fix the arm YAML"),
    Case("arm home_pose as words", lambda w: arm(w, "defaults: [so101_virtual]\nhome_pose: [a, b, c, d, e, f]\n"),
         r"home_pose=\['a', .* must be a list of numbers", r"one per joint"),
    Case("arm YAML the old base: key", lambda w: arm(w, "base: so101_virtual\nport: /dev/ttyUSB0\n"),
         r"`base: so101_virtual` is now written `defaults: \[so101_virtual\]`", r"edit the file"),
    Case("arm YAML defaults a name", lambda w: arm(w, "defaults: so101\n"), r"`defaults` must be a list",
         r"`defaults: \[so101\]`"),
    Case("arm YAML defaults itself", lambda w: arm(w, "defaults: [arm.yaml]\n"), r"nest more than 8 deep",
         r"fix them"),
    Case("arm control_hz fast", lambda w: arm(w, "defaults: [so101_virtual]\ncontrol_hz: fast\n"),
         r"control_hz='fast' must be a number", r"fix it in the arm YAML"),
    # ---- stores
    Case("store on a full disk", lambda w: ["sim", "demos", "episodes=1", f"out={w.tmp / 'new.zarr'}"],
         r"cannot create the store \S+new\.zarr: No space left on device",
         r"Free disk space or choose a writable location",
         patch=disk_error(errno.ENOSPC), then=absent(lambda w: w.tmp / "new.zarr")),
    Case("store on a read-only disk", lambda w: ["sim", "demos", "episodes=1", f"out={w.tmp / 'new.zarr'}"],
         r"cannot create the store \S+: Read-only file system", r"choose a writable location",
         patch=disk_error(errno.EROFS), then=absent(lambda w: w.tmp / "new.zarr")),
    Case("demos onto an existing store", lambda w: ["sim", "demos", "episodes=1", f"out={w.store}"],
         r"already exists", r"choose a new path"),
    Case("data info on a plain folder", lambda w: ["data", "info", str(w.tmp)], r"is not a zarr group",
         r"point at the store's root"),
    Case("data info on a file", lambda w: ["data", "info", str(w.file("x.txt", "hello"))], r"is not a zarr group",
         r"point at the store's root"),
    Case("store root metadata a list", lambda w: info(w, put("zarr.json", "[]")),
         r"is not a zarr group", r"point at the store's root"),
    Case("store episode table garbled", lambda w: info(w, garble("meta/episode_ends/c/**/*")),
         r"episode table or an array's metadata does not decode", r"restore it from a copy"),
    Case("store array metadata garbled", lambda w: info(w, garble("meta/episode_ends/zarr.json")),
         r"does not decode \(JSONDecodeError", r"restore it from a copy"),
    Case("store image chunk garbled", lambda w: ["data", "view", str(w.store_copy(garble("data/image/front/c/**/*"))),
                                                 "episode=0", f"out={w.tmp / 'view'}"],
         r"data/image/front rows \[0, \d+\) does not decode", r"restore it from a copy or import it again"),
    Case("store state chunk garbled", lambda w: train_wm(w, "steps=1", data=w.store_copy(garble("data/state/c/**/*"))),
         r"a low-dimensional array does not decode", r"restore it from a copy"),
    Case("store without episode_ends", lambda w: info(w, lambda s: shutil.rmtree(s / "meta" / "episode_ends")),
         r"lacks 'meta/episode_ends'", r"re-import or restore it from a copy"),
    Case("label episodes=abc", lambda w: ["data", "label", str(w.store), "episodes=abc", "success=true"],
         r"'abc' is not an episode number", r"write e\.g\. episodes=0,3,5-9"),
    Case("label an episode out of range", lambda w: ["data", "label", str(w.store), "episodes=7", "success=true"],
         r"episode 7 is out of range", r"numbered 0\.\.1"),
    Case("view episode=abc", lambda w: ["data", "view", str(w.store), "episode=abc"], r"is not an episode number",
         r"pass e\.g\. episode=0"),
    Case("import a file that is no video", lambda w: ["data", "import", "video", str(w.file("clip.mp4", GARBAGE)),
                                                      str(w.tmp / "imp.zarr")],
         r"cannot open video", r"not a video", then=absent(lambda w: w.tmp / "imp.zarr")),
    Case("train-wm on a store that is a file", lambda w: train_wm(w, data=w.file("s.zarr", "x")),
         r"is not a zarr group", r"point at the store's root"),
    # ---- checkpoints
    Case("world model weights garbled", lambda w: eval_wm(w, put("model.safetensors", GARBAGE)),
         r"model\.safetensors is not a valid safetensors file", AGAIN),
    Case("world model weights truncated", lambda w: ["train-agent", "steps=1", "device=cpu", f"out={w.tmp / 'a'}",
                                                     f"wm={w.wm(truncate('model.safetensors'))}"],
         r"model\.safetensors is not a valid safetensors file", AGAIN),
    Case("world model weights empty", lambda w: eval_wm(w, put("model.safetensors", b"")), r"header too small", AGAIN),
    Case("world model config.yaml broken", lambda w: eval_wm(w, put("config.yaml", "a: [\n")),
         r"config\.yaml is not valid YAML", AGAIN),
    Case("world model config.yaml binary", lambda w: eval_wm(w, put("config.yaml", GARBAGE)),
         r"config\.yaml is not valid YAML", AGAIN),
    Case("world model config.yaml a word", lambda w: eval_wm(w, put("config.yaml", "hello")),
         r"config\.yaml is not a training config", AGAIN),
    Case("world model without config.yaml", lambda w: ["train-agent", "steps=1", f"wm={w.wm(remove('config.yaml'))}"],
         r"has no config\.yaml", r"copy the whole run folder again or train it again"),
    Case("world model trainer.json garbled", lambda w: eval_wm(w, put("trainer.json", GARBAGE)),
         r"trainer\.json is not valid JSON", AGAIN),
    Case("world model trainer.json without spec", lambda w: eval_wm(w, put("trainer.json", '{"backend": "rssm"}')),
         r"trainer\.json is lacking \['spec'\]", AGAIN),
    Case("resume from a garbled optimizer.json", lambda w: train_wm(w, "steps=2",
                                                                    f"resume={w.wm(put('optimizer.json', GARBAGE))}"),
         r"optimizer\.json is not valid JSON", AGAIN),
    Case("scratch policy json garbled", lambda w: ["export", f"out={w.tmp / 'b'}",
                                                   f"policy={w.scratch(put('scratch_bc.json', GARBAGE))}"],
         r"scratch_bc\.json is not valid JSON", AGAIN),
    Case("scratch policy weights of another model", lambda w: ["export", f"out={w.tmp / 'b'}", "policy=" + str(
        w.scratch(lambda s: shutil.copy(w.wm_run / "checkpoint" / "model.safetensors", s / "policy.safetensors")))],
         r"policy\.safetensors is for another model \(\d+ tensors missing", AGAIN),
    Case("scratch policy weights missing", lambda w: ["eval", "episodes=1",
                                                      f"policy={w.scratch(remove('policy.safetensors'))}"],
         r"policy\.safetensors is missing", AGAIN),
    Case("agent.json a list", lambda w: ["eval", "episodes=1", f"policy={w.agent([])}"], r"agent\.json is a JSON list",
         AGAIN),
    Case("agent weights garbled", lambda w: ["eval", "episodes=1", "policy=" + str(w.agent(
        {"sizes": {"feat_dim": 8, "action_dim": 6, "instr_dim": 384, "units": 16, "layers": 1, "min_std": 0.1,
                   "max_std": 1.0}, "world_model": str(w.wm_run), "image_key": "image/front"}))],
         r"agent\.safetensors is not a valid safetensors file", AGAIN),
    # ---- bundles: manifest fields the runtime reads, the manifest's seal, the folder
    Case("bundle image shape as a string", lambda w: deploy(w.bundle(edit("observation.image.shape", "64x64"))),
         r'observation\.image\.shape is "64x64", expected \[height, width, 3\]', RE_EXPORT),
    Case("bundle state shape null", lambda w: deploy(w.bundle(edit("observation.state.shape", None))),
         r"observation\.state\.shape is null", RE_EXPORT),
    Case("bundle instruction spec deleted", lambda w: deploy(w.bundle(edit("observation.instruction", DELETE))),
         r"observation\.instruction\.max_chars is absent", RE_EXPORT),
    Case("bundle control_hz fast", lambda w: deploy(w.bundle(edit("control_hz", "fast"))),
         r'control_hz is "fast", expected a rate in Hz', RE_EXPORT),
    Case("bundle control_hz 0", lambda w: deploy(w.bundle(edit("control_hz", 0))), r"control_hz is 0", RE_EXPORT),
    Case("bundle image key a number", lambda w: deploy(w.bundle(edit("observation.image_key", 5))),
         r"observation\.image_key is 5", RE_EXPORT),
    Case("bundle action shape empty", lambda w: deploy(w.bundle(edit("action.shape", []))), r"action\.shape is \[\]",
         RE_EXPORT),
    Case("bundle extra camera without its shape",
         lambda w: deploy(w.bundle(edit("observation.extra_images", [{"key": "image/wrist"}]))),
         r'observation\.extra_images is \[\{"key": "image/wrist"\}\], expected .*\[height, width, 3\]', RE_EXPORT),
    Case("bundle extra camera the main one",
         lambda w: deploy(w.bundle(edit("observation.extra_images", [{"key": "image/front", "shape": [64, 64, 3]}]))),
         r"observation\.extra_images repeats the main camera 'image/front'", RE_EXPORT),
    Case("bundle state tensors a mapping", lambda w: deploy(w.bundle(edit("state_tensors", {"h": 1}))),
         r"state_tensors is \{\"h\": 1\}", RE_EXPORT),
    Case("bundle policy graph entry deleted", lambda w: deploy(w.bundle(edit("onnx.policy", DELETE))),
         r"onnx\.policy\.file is absent", RE_EXPORT),
    Case("bundle file entry emptied", lambda w: deploy(w.bundle(lambda m: m["files"]["policy.onnx"].clear())),
         r"files is \{.*expected \{file name: \{sha256, bytes\}\}", RE_EXPORT),
    Case("bundle robot a string", lambda w: deploy(w.bundle(edit("robot", "so101"))), r'robot is "so101"', RE_EXPORT),
    Case("bundle normalization a list", lambda w: deploy(w.bundle(edit("normalization", [1, 2]))),
         r"normalization is \[1, 2\]", RE_EXPORT),
    Case("bundle action scale too short", lambda w: deploy(w.bundle(edit("robot.action_scale", [0.1]))),
         r"robot\.action_scale has 1 values for 6 action values", RE_EXPORT),
    Case("bundle of another format", lambda w: deploy(w.bundle(edit("format", "other/9"))), r"format 'other/9'",
         r"re-export the policy with this version"),
    Case("bundle manifest not JSON", lambda w: deploy(_sealed_text(w, "{not json")),
         r"manifest\.json is not valid JSON", RE_EXPORT),
    Case("bundle manifest edited after export", lambda w: deploy(w.bundle(edit("control_hz", 50.0), seal=False)),
         r"manifest\.json fails its checksum", r"copy the bundle again or re-run `reverie export`"),
    Case("bundle without its digest", lambda w: deploy(_without_digest(w)), r"manifest\.json\.sha256 is missing",
         r"copy the whole bundle folder again or re-run `reverie export`"),
    # The template itself passes every field check: only the files it lists are missing.
    Case("bundle without its files", lambda w: deploy(w.bundle()), r"bundle file \S+policy\.onnx is missing",
         r"copy the whole bundle folder again"),
    Case("bundle that is a file", lambda w: deploy(w.file("bundle.zip", GARBAGE)), r"is not a folder",
         r"pass bundle=PATH of a folder written by `reverie export"),
    Case("deploy report= written on a refused bundle", lambda w: deploy(w.bundle(edit("control_hz", "fast")),
                                                                         f"report={w.tmp / 'report.json'}"),
         r"control_hz is \"fast\"", RE_EXPORT, then=lambda w: _report_names_fault(w, "control_hz")),
]


def _sealed_text(w: World, text: str) -> Path:
    from reverie.runtime import manifest

    folder = w.bundle()
    (folder / "manifest.json").write_text(text)
    manifest.seal(folder)
    return folder


def _without_digest(w: World) -> Path:
    folder = w.bundle()
    (folder / "manifest.json.sha256").unlink()
    return folder


def _report_names_fault(w: World, text: str) -> None:
    report = json.loads((w.tmp / "report.json").read_text())
    assert len(report) == 1 and text in report[0]["fault"], report


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict:
    """A two-episode store, a tiny world model saved at step 0 (no training step) and an untrained
    scratch-BC policy: what the checkpoint cases damage copies of."""
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from export_setup import synthetic_store
    from reverie.config import compose
    from reverie.policy.scratch_bc import ScratchPolicy, save
    from reverie.world_model.train import Trainer

    root = tmp_path_factory.mktemp("corpus")
    store = synthetic_store(root / "store.zarr", episodes=2, length=12)
    torch.manual_seed(0)
    Trainer(compose("train_wm", ["preset=tiny", f"data={store}", f"out={root / 'wm'}", "steps=1", "holdout=0",
                                 "progress=false", "device=cpu"])).save()
    save(root / "scratch", ScratchPolicy(16, 6, 6, cnn_depth=4, units=32, layers=1).eval(),
         {"image_key": "image/front", "stores": [str(store)]})
    return {"store": store, "wm": root / "wm", "scratch": root / "scratch"}


def test_the_corpus_is_large_and_covers_every_kind_of_input():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_error_and_exit_2(case, shared, tmp_path, capsys, caplog, monkeypatch):
    w = World(shared, tmp_path)
    committed = _digest(shared["store"])
    argv = [str(a) for a in case.argv(w)]
    capsys.readouterr()
    if case.patch:
        case.patch(monkeypatch)
    rc = main(argv)
    monkeypatch.undo()
    out, err = capsys.readouterr()
    everything = out + err + caplog.text
    assert "Traceback" not in everything, everything[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2 and len(errors) == 1, f"rc={rc}\n{everything[-3000:]}"
    line = errors[0]
    assert err.rstrip().endswith(line), f"the error goes on past its line:\n{err}"
    assert re.search(case.problem, line), f"problem {case.problem!r} not named in: {line}"
    assert re.search(case.fix, line), f"fix {case.fix!r} not named in: {line}"
    assert _digest(shared["store"]) == committed, "a failing command changed the committed store"
    if case.then:
        case.then(w)
