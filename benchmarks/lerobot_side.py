"""The lerobot half of lerobot_roundtrip.py: runs inside the environment that has the official
`lerobot` package (never reverie's), and prints one JSON line.

    python lerobot_side.py versions
    python lerobot_side.py write ROOT video|image OUT.npz   LeRobot's writer makes a dataset; what it
                                                           was given goes to OUT.npz
    python lerobot_side.py read ROOT OUT.npz               LeRobotDataset loads ROOT; every frame's
                                                           values go to OUT.npz
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

CAMERAS = {"front": (64, 64), "wrist": (48, 64)}
LENGTHS = (9, 14)  # two episodes of different lengths
FPS = 10
TASKS = ("touch the red cube", "tap the blue block")


def frames(ep: int, n: int, h: int, w: int) -> np.ndarray:
    """Smooth moving gradients: content a video codec treats as it would a camera's."""
    y, x = np.mgrid[:h, :w]
    return np.stack([np.stack([3 * x + 4 * t, 3 * y + 30 * ep, np.full_like(x, 90 + 5 * t)], -1)
                     for t in range(n)]).astype(np.uint8)


def write(root: Path, images: str, out: Path) -> dict:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {f"observation.images.{c}": {"dtype": "video" if images == "video" else "image", "shape": (h, w, 3),
                                            "names": ["height", "width", "channels"]} for c, (h, w) in CAMERAS.items()}
    features["observation.state"] = {"dtype": "float32", "shape": (6,), "names": [f"joint_{j}" for j in range(6)]}
    features["action"] = {"dtype": "float32", "shape": (6,), "names": [f"joint_{j}" for j in range(6)]}
    features["next.reward"] = {"dtype": "float32", "shape": (1,), "names": None}
    features["next.done"] = {"dtype": "bool", "shape": (1,), "names": None}
    ds = LeRobotDataset.create("reverie/roundtrip", fps=FPS, features=features, root=root, robot_type="so101",
                               use_videos=images == "video")
    rng = np.random.default_rng(0)
    given = {k: [] for k in ("state", "action", "next.reward", "next.done", "episode", "frame",
                             *(f"image/{c}" for c in CAMERAS))}
    for ep, n in enumerate(LENGTHS):
        cams = {c: frames(ep, n, h, w) for c, (h, w) in CAMERAS.items()}
        state = rng.normal(size=(n, 6)).astype(np.float32)
        action = rng.uniform(-1, 1, (n, 6)).astype(np.float32)
        # The last frame's next.reward leads to an observation never recorded (a store drops it): 0 here.
        reward = np.r_[rng.uniform(size=n - 1), 0].astype(np.float32)
        done = (np.arange(n) == n - 1) & (ep == 1)  # episode 1 ends the task; episode 0 just stops
        for t in range(n):
            ds.add_frame({"observation.state": state[t], "action": action[t], "task": TASKS[ep],
                          "next.reward": reward[t:t + 1], "next.done": done[t:t + 1],
                          **{f"observation.images.{c}": cams[c][t] for c in CAMERAS}})
        ds.save_episode()
        given["state"].append(state), given["action"].append(action)
        given["next.reward"].append(reward), given["next.done"].append(done)
        given["episode"].append(np.full(n, ep)), given["frame"].append(np.arange(n))
        for c in CAMERAS:
            given[f"image/{c}"].append(cams[c])
    ds.finalize()
    np.savez(out, tasks=np.array(TASKS), **{k: np.concatenate(v) for k, v in given.items()})
    info = json.loads((root / "meta" / "info.json").read_text())
    codec = next((f.get("info", {}).get("video.codec") for f in info["features"].values() if f["dtype"] == "video"), None)
    return {"episodes": len(LENGTHS), "cameras": list(CAMERAS), "codec": codec,
            "files": sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())}


def read(root: Path, out: Path) -> dict:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("reverie/roundtrip", root=root, video_backend="pyav")
    cams = [k.removeprefix("observation.images.") for k in ds.meta.camera_keys]
    got = {k: [] for k in ("state", "action", "next.reward", "next.done", "episode", "frame",
                           *(f"image/{c}" for c in cams))}
    tasks = {}
    for i in range(len(ds)):
        item = ds[i]
        got["state"].append(item["observation.state"].numpy())
        got["action"].append(item["action"].numpy())
        got["next.reward"].append(float(item["next.reward"])), got["next.done"].append(bool(item["next.done"]))
        got["episode"].append(int(item["episode_index"])), got["frame"].append(int(item["frame_index"]))
        tasks.setdefault(int(item["episode_index"]), item["task"])
        for c in cams:  # (3, H, W) float in [0, 1] -> (H, W, 3) uint8, as the store holds frames
            x = item[f"observation.images.{c}"].numpy()
            got[f"image/{c}"].append(np.clip(np.rint(x.transpose(1, 2, 0) * 255), 0, 255).astype(np.uint8))
    np.savez(out, tasks=np.array([tasks[i] for i in sorted(tasks)]), **{k: np.stack(v) for k, v in got.items()})
    return {"episodes": ds.num_episodes, "frames": len(ds), "fps": ds.fps, "cameras": cams}


def versions() -> dict:
    import importlib.metadata as m

    return {name: m.version(name) for name in ("lerobot", "torch", "datasets", "av", "pyarrow")} | {
        "python": sys.version.split()[0]}


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    result = {"versions": lambda: versions(), "write": lambda: write(Path(args[0]), args[1], Path(args[2])),
              "read": lambda: read(Path(args[0]), Path(args[1]))}[cmd]()
    print(json.dumps(result))
