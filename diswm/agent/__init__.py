"""What actors run: the recurrent `Policy` that maps observations to actions on CPU."""

from diswm.agent.policy import Policy

__all__ = ["Policy"]
