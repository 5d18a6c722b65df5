"""reverie.sim: MuJoCo arm tasks, dm_control and gymnasium adapters, the virtual servo bus.

Importing it registers the arm tasks with gymnasium (`gymnasium.make("reverie/ArmTouch-v0")`, also
ArmPush, ArmLift, ArmAll; or without the import, `gymnasium.make("reverie.sim:reverie/ArmTouch-v0")`).
The adapters are importable from here, loaded on first use:
  make(name)            any reverie env by name (sim/registry.py)
  ReverieToGym(env)     a reverie env as a gymnasium.Env;    GymToReverie(gym_env): the other way
  ReverieToDmEnv(env)   a reverie env as a dm_env.Environment; DmEnvToReverie(dm_env_env): the other way
"""

import importlib
import importlib.util

_LAZY = {
    "make": "reverie.sim.registry",
    "ReverieToGym": "reverie.sim.gym_adapters", "GymToReverie": "reverie.sim.gym_adapters",
    "ReverieToDmEnv": "reverie.sim.dm_env_adapters", "DmEnvToReverie": "reverie.sim.dm_env_adapters",
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reverie.sim' has no attribute {name!r}")


# A robot install may lack gymnasium; nothing else here needs it.
if importlib.util.find_spec("gymnasium") is not None:
    from reverie.sim.gym_adapters import register_gym_envs

    register_gym_envs()
