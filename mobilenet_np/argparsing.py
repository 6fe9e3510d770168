"""An argparse parser that says "did you mean" for a mistyped command or option.

Python 3.14's ``suggest_on_error`` does this for commands only; here it is for both, on every
version we support: a mistyped option (``--ouput``) is named with the closest options of the
command it was given to, also when argparse would otherwise only report that a required option
(``--modle`` for ``--model``) is missing.  Deliberately not here: the commands (``cli.py``).
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys

_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")


class SuggestingParser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors end in a "did you mean" when a close name exists.
    Sub-command parsers made by ``add_subparsers`` are of this class too."""

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def parse_args(self, args=None, namespace=None):
        """As argparse, but unknown options are reported by the command they were given to,
        which knows the options to suggest."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = self._command_parser(parsed)
            command.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def error(self, message):
        super().error(message + self._suggestion(message))

    def _suggestion(self, message: str) -> str:
        choice = _INVALID_CHOICE.search(message)
        if choice:
            options = re.findall(r"'([^']*)'", choice.group(2))
            close = difflib.get_close_matches(choice.group(1), options, n=1)
            return f"; did you mean '{close[0]}'?" if close else ""
        known = [o for o in self._option_string_actions if o.startswith("--")]
        hints = []
        for token in getattr(self, "_given", []):
            name = token.split("=", 1)[0]
            if name.startswith("--") and name not in self._option_string_actions and \
                    not any(o.startswith(name) for o in known):      # argparse takes unique prefixes
                close = difflib.get_close_matches(name, known, n=1)
                hints += [f"'{name}': did you mean '{close[0]}'?"] if close else []
        return "; " + "; ".join(hints) if hints else ""

    def _command_parser(self, parsed) -> argparse.ArgumentParser:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices.get(getattr(parsed, action.dest, None), self)
        return self
