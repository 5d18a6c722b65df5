"""Teacher-forced vs closed-loop action error of a controller on recorded episodes.

Both replay a recorded episode's observations through the controller and compare its action with
the one recorded (mean |a - a_recorded| over rows with a known action, in the store's units):
  teacher-forced  after each step the controller hears the *recorded* action (observe_executed), so
                  a recurrent policy filters exactly as in training;
  closed-loop     it hears nothing: a recurrent policy filters with its *own* previous action, as it
                  does when deployed.
A large gap says the policy leans on its previous action (it learned to copy a_{t-1}, which the
recorded stream gives away and its own stream does not). Stateless controllers score the same twice.
"""

from __future__ import annotations

import numpy as np


def action_errors(controller, store, episodes: list[int], image_key: str = "image/front") -> dict:
    """-> {"teacher_forced": float, "closed_loop": float, "rows": int} over `episodes` of `store`."""
    errors = {"teacher_forced": [], "closed_loop": []}
    cameras = list(getattr(controller, "image_keys", None) or [image_key])  # every camera the controller reads
    for e in episodes:
        ep = store.episode(e, keys=[*cameras, "state", "action", "action_mask"])
        instruction = store.meta(e).instruction
        for mode, err in errors.items():
            controller.reset(instruction)
            for t in range(len(ep["state"])):
                if not ep["action_mask"][t]:
                    continue
                obs = {**{k: ep[k][t] for k in cameras}, "state": ep["state"][t], "instruction": instruction}
                action = np.asarray(controller.act(obs), np.float32)
                err.append(float(np.abs(action - ep["action"][t]).mean()))
                if mode == "teacher_forced" and hasattr(controller, "observe_executed"):
                    controller.observe_executed(ep["action"][t])
    return {k: float(np.mean(v)) if v else float("nan") for k, v in errors.items()} | {
        "rows": len(errors["closed_loop"])}
