"""Intents answered from the assistant's own state: the registry the responder asks."""

from assistant.handlers.registry import Asked, Handled, Handlers, IntentHandler

__all__ = ["Asked", "Handled", "Handlers", "IntentHandler"]
