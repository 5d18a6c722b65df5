"""reverie: world-model agents for low-cost robot arms.

Record demos -> zarr episodes -> world model -> policy trained in imagination -> ONNX -> robot.
Subpackages live in top-level folders (datasets/, sim/, robot_io/, world_model/, policy/, export/)
mapped to `reverie.<folder>` by pyproject.toml.
"""

__version__ = "0.1.0"
