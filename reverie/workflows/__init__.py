"""Workflows: commands that drive several packages end to end. `reverie pipeline` (pipeline.py: demos
-> world model -> agents -> bundle -> deployment) and `reverie improve` (improve.py: corrective data
rounds). They sit above every package they call; nothing below imports them (tests/test_layering.py)."""
