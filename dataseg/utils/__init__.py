"""Small utilities shared by the engine, the demo and the projects."""

from .visualizer import draw_predictions, visualization_metadata  # noqa: F401
