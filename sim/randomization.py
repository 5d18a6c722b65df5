"""Domain randomisation presets for the sim arm: nominal | randomized | shifted.

A preset is a set of ranges; `sample` draws one concrete `Variation` per episode and `apply` writes
it into the MuJoCo model (colours, table texture, lights, camera pose, friction, masses, servo gains).
Three entries are not model parameters and are applied by the environment instead: action latency
(in control steps) and observation noise (radians on the joint state, pixel levels on the images).

`shifted` is a single fixed variant chosen outside every `randomized` range (dimmer light, a table
texture never seen in training, a camera moved further than the jitter, heavier cubes, softer servos,
3 steps of latency), so a policy trained on `randomized` meets it as a sim-to-sim transfer test.
"""

from __future__ import annotations

import dataclasses

import mujoco
import numpy as np

from reverie.errors import ConfigError, did_you_mean

COLOURS = ("red", "green", "blue")
NOMINAL_RGB = {"red": (0.85, 0.12, 0.1), "green": (0.1, 0.65, 0.2), "blue": (0.12, 0.3, 0.9)}
TABLE_MATERIALS = ("table_wood", "table_checker", "table_grey")


@dataclasses.dataclass(frozen=True)
class Variation:
    """One episode's concrete deviation from the nominal scene."""

    cube_rgb: dict[str, tuple[float, float, float]]
    table_material: str = "table_wood"
    light_scale: float = 1.0  # multiplies every light's diffuse colour
    light_shift: tuple[float, float, float] = (0.0, 0.0, 0.0)  # metres, added to light positions
    camera_shift: tuple[float, float, float] = (0.0, 0.0, 0.0)  # metres, added to the front camera
    fovy_shift: float = 0.0  # degrees
    friction_scale: float = 1.0  # cubes and table
    mass_scale: float = 1.0  # cubes and arm links
    gain_scale: float = 1.0  # servo kp (and kv, so the loop's damping ratio is kept)
    latency_steps: int = 0  # control steps between an action and its effect (env)
    state_noise: float = 0.0  # std of Gaussian noise on the joint state, radians (env)
    image_noise: float = 0.0  # std of Gaussian noise on every pixel, in 0-255 levels (env)


@dataclasses.dataclass(frozen=True)
class Ranges:
    """Uniform ranges of the `randomized` preset."""

    colour_jitter: float = 0.12
    table_materials: tuple[str, ...] = ("table_wood", "table_checker")
    light_scale: tuple[float, float] = (0.7, 1.3)
    light_shift: float = 0.15
    camera_shift: float = 0.03
    fovy_shift: float = 3.0
    friction_scale: tuple[float, float] = (0.7, 1.3)
    mass_scale: tuple[float, float] = (0.8, 1.25)
    gain_scale: tuple[float, float] = (0.75, 1.25)
    latency_steps: tuple[int, int] = (0, 2)
    state_noise: tuple[float, float] = (0.0, 0.01)
    image_noise: tuple[float, float] = (0.0, 4.0)


RANDOMIZED = Ranges()
NOMINAL = Variation(cube_rgb=dict(NOMINAL_RGB))
SHIFTED = Variation(
    cube_rgb={"red": (0.6, 0.05, 0.2), "green": (0.35, 0.7, 0.05), "blue": (0.05, 0.5, 0.7)},
    table_material="table_grey",
    light_scale=0.5,
    light_shift=(-0.3, 0.3, 0.0),
    camera_shift=(0.05, 0.06, -0.05),
    fovy_shift=6.0,
    friction_scale=0.6,
    mass_scale=1.5,
    gain_scale=0.6,
    latency_steps=3,
    state_noise=0.02,
    image_noise=8.0,
)
PRESETS = ("nominal", "randomized", "shifted")


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ConfigError(f"unknown randomisation preset {preset!r}{did_you_mean(preset, PRESETS)}: use one of "
                          f"{', '.join(PRESETS)} "
                          f"(e.g. preset=randomized)")
    return preset


def sample(preset: str, rng: np.random.Generator, ranges: Ranges = RANDOMIZED) -> Variation:
    """Draw one episode's variation; nominal and shifted are fixed and draw nothing."""
    check_preset(preset)
    if preset == "nominal":
        return NOMINAL
    if preset == "shifted":
        return SHIFTED
    r = ranges
    uni = lambda lo_hi: float(rng.uniform(*lo_hi))  # noqa: E731
    rgb = {c: tuple(np.clip(np.array(v) + rng.uniform(-r.colour_jitter, r.colour_jitter, 3), 0, 1).tolist())
           for c, v in NOMINAL_RGB.items()}
    return Variation(
        cube_rgb=rgb,
        table_material=str(rng.choice(r.table_materials)),
        light_scale=uni(r.light_scale),
        light_shift=tuple(rng.uniform(-r.light_shift, r.light_shift, 3).tolist()),
        camera_shift=tuple(rng.uniform(-r.camera_shift, r.camera_shift, 3).tolist()),
        fovy_shift=float(rng.uniform(-r.fovy_shift, r.fovy_shift)),
        friction_scale=uni(r.friction_scale),
        mass_scale=uni(r.mass_scale),
        gain_scale=uni(r.gain_scale),
        latency_steps=int(rng.integers(r.latency_steps[0], r.latency_steps[1] + 1)),
        state_noise=uni(r.state_noise),
        image_noise=uni(r.image_noise),
    )


class ModelEditor:
    """Remembers the nominal values of every field a variation touches, so variations never compound."""

    def __init__(self, model: mujoco.MjModel):
        self.model = model
        m = model
        name = lambda kind, n: mujoco.mj_name2id(m, kind, n)  # noqa: E731
        self.cube_geoms = {c: name(mujoco.mjtObj.mjOBJ_GEOM, f"cube_{c}") for c in COLOURS}
        self.table_geom = name(mujoco.mjtObj.mjOBJ_GEOM, "table")
        self.materials = {t: name(mujoco.mjtObj.mjOBJ_MATERIAL, t) for t in TABLE_MATERIALS}
        self.camera = name(mujoco.mjtObj.mjOBJ_CAMERA, "front")
        self.friction_geoms = [self.table_geom, *self.cube_geoms.values()]
        self.mass_bodies = [i for i in range(1, m.nbody) if m.body_mass[i] > 0]
        self.nominal = {
            "light_diffuse": m.light_diffuse.copy(), "light_pos": m.light_pos.copy(),
            "cam_pos": m.cam_pos.copy(), "cam_fovy": m.cam_fovy.copy(),
            "geom_friction": m.geom_friction.copy(), "body_mass": m.body_mass.copy(),
            "body_inertia": m.body_inertia.copy(), "gainprm": m.actuator_gainprm.copy(),
            "biasprm": m.actuator_biasprm.copy(),
        }

    def apply(self, v: Variation) -> None:
        m, n = self.model, self.nominal
        for colour, geom in self.cube_geoms.items():
            m.geom_rgba[geom, :3] = v.cube_rgb[colour]
        m.geom_matid[self.table_geom] = self.materials[v.table_material]
        m.light_diffuse[:] = np.clip(n["light_diffuse"] * v.light_scale, 0, 1)
        m.light_pos[:] = n["light_pos"] + np.asarray(v.light_shift)
        m.cam_pos[self.camera] = n["cam_pos"][self.camera] + np.asarray(v.camera_shift)
        m.cam_fovy[self.camera] = n["cam_fovy"][self.camera] + v.fovy_shift
        m.geom_friction[self.friction_geoms, 0] = n["geom_friction"][self.friction_geoms, 0] * v.friction_scale
        m.body_mass[self.mass_bodies] = n["body_mass"][self.mass_bodies] * v.mass_scale
        m.body_inertia[self.mass_bodies] = n["body_inertia"][self.mass_bodies] * v.mass_scale
        # Position actuator: force = kp * ctrl - kp * q - kv * qdot (gainprm[0] = kp, biasprm = [0, -kp, -kv]).
        m.actuator_gainprm[:, 0] = n["gainprm"][:, 0] * v.gain_scale
        m.actuator_biasprm[:, 1:3] = n["biasprm"][:, 1:3] * v.gain_scale
