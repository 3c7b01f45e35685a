"""The command-line convention of every command here: option names with underscores, as LiveTalking's
(`--models_dir`, `--avatar_id`); the same name with hyphens (`--models-dir`) is accepted too."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


class ArgumentParser(argparse.ArgumentParser):
    """argparse, reading `--some-option` as `--some_option` when only the underscore spelling is defined."""

    # typeshed's overloads of parse_known_args (generic in the namespace's type) are not repeated here.
    def parse_known_args(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        args = sys.argv[1:] if args is None else args
        return super().parse_known_args([self._underscored(a) for a in args], namespace)

    def _underscored(self, arg: str) -> str:
        if not arg.startswith("--") or "-" not in arg[2:].partition("=")[0]:
            return arg
        name, sep, value = arg.partition("=")
        spelled = "--" + name[2:].replace("-", "_")
        if name in self._option_string_actions or spelled not in self._option_string_actions:
            return arg
        return spelled + sep + value
