"""Answers: the responder, the fragments it stitches and whose they are, and its actions."""

from assistant.answers.actions import PlannedAction
from assistant.answers.fragments import FragmentResult
from assistant.answers.responder import NOT_UNDERSTOOD, Answer, Responder

__all__ = ["NOT_UNDERSTOOD", "Answer", "FragmentResult", "PlannedAction", "Responder"]
