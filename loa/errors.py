"""Errors that reach the user as one clear line.

Everything the CLI reports without a traceback derives from :class:`LoaError`.

A message that an official may read in the console or through the API is a :class:`Text`:
an English sentence, which ``str()`` gives (logs, the CLI), that also carries its template
and parameters, so that :meth:`LoaError.localized` says it in another language through the
gettext catalog (``loa/locale``).  ``tests/test_i18n.py`` checks that every ``Text("...")``
in the code has its Vietnamese.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from loa.i18n import Language


class _Filler(string.Formatter):
    """Fills a template: ``{n:n}`` is a number in the language's format, a :class:`Text`
    parameter is said in the language too."""

    def __init__(self, language: Language | None) -> None:
        self.language = language

    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, Text):
            return value.in_language(self.language)
        if format_spec == "n":
            if self.language is None:
                return f"{value:,}"
            return self.language.number(value, 0 if isinstance(value, int) else 1)
        return format(value, format_spec)


class Text(str):
    """An English sentence (``str()`` of it) that can be said in another language.

    ``Text("campaign {name} has no version {number:n}", name="hi", number=3)``: ``template``
    is the catalog's msgid, ``params`` fill it; ``{x:n}`` formats a number the language's
    way (``84.126`` / ``84,126``), and a parameter that is itself a Text is translated too."""

    template: str
    params: dict[str, Any]

    def __new__(cls, template: str, /, **params: Any) -> Self:
        self = super().__new__(cls, _Filler(None).format(template, **params))
        self.template, self.params = template, params
        return self

    def __reduce__(self) -> Any:
        return _text, (self.template, self.params)

    def replace(self, old: str, new: str, count: int = -1) -> str:  # type: ignore[override]
        """As ``str.replace``, keeping the sentence translatable when ``old`` lies in its parameters
        only (a folder's path taken out of a problem); a plain string otherwise."""
        plain = str.replace(self, old, new, count)
        if count != -1 or old not in str(self):
            return plain if count != -1 else (self if plain == str(self) else plain)
        params = {k: v.replace(old, new) if isinstance(v, str) else v for k, v in self.params.items()}
        replaced = Text(self.template, **params)
        return replaced if str(replaced) == plain else plain

    def in_language(self, language: Language | None) -> str:
        """The sentence in ``language`` (English for None or "en")."""
        if language is None:
            return str(self)
        return _Filler(language).format(language.gettext(self.template), **self.params)


def _text(template: str, params: dict[str, Any]) -> Text:
    return Text(template, **params)


def say(message: object, language: Language | None) -> str:
    """``message`` in ``language``: a :class:`Text` translated, anything else as it is."""
    return message.in_language(language) if isinstance(message, Text) else str(message)


class LoaError(Exception):
    """A problem the user can fix; ``str()`` is the one line they see."""

    exit_code = 1

    def lines(self) -> list[str]:
        """What the user sees, one problem per line."""
        return [str(self)]

    def localized(self, language: Language | None) -> str:
        """The message in ``language``: translated where it is a :class:`Text`."""
        return say(self.args[0], language) if self.args else ""


class ConfigError(LoaError):
    """The configuration file or environment is wrong (exit code 2).

    Built from several problems, it reports each on its own line."""

    exit_code = 2

    def __init__(self, *problems: str) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(problems))

    def lines(self) -> list[str]:
        return self.problems or [str(self)]

    def localized(self, language: Language | None) -> str:
        return "\n".join(say(p, language) for p in self.problems) or super().localized(language)


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
        super().__init__(str(self._head()))

    def _head(self) -> Text | str:
        head = self.problems[0] if self.problems else Text("invalid campaign")
        if len(self.problems) < 2:
            return head
        return Text("{problem} (and {more:n} more problem(s); run `loa campaigns validate`)",
                    problem=head, more=len(self.problems) - 1)

    def localized(self, language: Language | None) -> str:
        return say(self._head(), language)


class NotFound(LoaError):
    exit_code = 2


class TemplateError(LoaError):
    """A template could not be rendered for a recipient."""
