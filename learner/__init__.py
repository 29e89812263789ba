"""The learner role: training logic (`Learner`, runs without Ray) and its process shells."""

from learner.learner import Learner

__all__ = ["Learner"]
