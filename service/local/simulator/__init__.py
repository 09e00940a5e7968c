"""A local stand-in for the OpenAI Videos API (Sora 2) that the official SDK can talk to.

It renders real, playable MP4s, derives job status from an injectable clock, and can be
told to fail (``FailureRule``), so the worker can be tested end to end without OpenAI.
"""

from .config import FailureRule, JobShapes, SimulatorConfig
from .profiles import PROFILES, ProfileName
from .server import Simulator

__all__ = ["PROFILES", "FailureRule", "JobShapes", "ProfileName", "Simulator", "SimulatorConfig"]
