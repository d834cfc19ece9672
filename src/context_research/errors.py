"""Errors that end a run with a message a user can act on."""


class ContextResearchError(RuntimeError):
    """Base class: the message is shown to the user as-is."""


class ConfigError(ContextResearchError):
    """Bad configuration or input file; the message names the key or file."""


class EngineStartError(ContextResearchError):
    """The real engine could not be started; the message says why and what to do."""


class EngineDiedError(ContextResearchError):
    """The engine exited while a run still had points to measure; measured points were kept."""
