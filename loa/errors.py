"""Errors that reach the user as one clear line.

Everything the CLI reports without a traceback derives from :class:`LoaError`.
"""

from __future__ import annotations


class LoaError(Exception):
    """A problem the user can fix; ``str()`` is the one line they see."""

    exit_code = 1

    def lines(self) -> list[str]:
        """What the user sees, one problem per line."""
        return [str(self)]


class ConfigError(LoaError):
    """The configuration file or environment is wrong (exit code 2).

    Built from several problems, it reports each on its own line."""

    exit_code = 2

    def __init__(self, *problems: str) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(problems))

    def lines(self) -> list[str]:
        return self.problems or [str(self)]


class SecretMissing(ConfigError):
    pass


class InputError(LoaError):
    """A file given to loa cannot be used as it is (wrong header, unreadable)."""

    exit_code = 2


class CampaignError(LoaError):
    """A campaign definition is invalid.  ``problems`` lists every one found."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        head = problems[0] if problems else "invalid campaign"
        more = f" (and {len(problems) - 1} more problem(s); run `loa campaigns validate`)" if len(problems) > 1 else ""
        super().__init__(head + more)


class NotFound(LoaError):
    exit_code = 2


class TemplateError(LoaError):
    """A template could not be rendered for a recipient."""
