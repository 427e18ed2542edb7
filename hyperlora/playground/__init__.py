"""The local web playground (``hyperlora playground``): ``session`` does the work, ``app`` is the page."""

from hyperlora.playground.session import PlaygroundError, PlaygroundSession, parse_instructions

__all__ = ["PlaygroundError", "PlaygroundSession", "parse_instructions"]
