"""Command-line options beside the server's own: a YAML config file (--config) and LiveTalking's options that
have no meaning here (accepted, with a warning, so its command lines still start)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

# LiveTalking options with no meaning in this server: (flag, why it is ignored).
IGNORED = (
    ("-l", "left audio context in 20 ms frames: the engine takes the context its model needs"),
    ("-m", "unused by LiveTalking itself"),
    ("-r", "right audio context in 20 ms frames: see --right_context (seconds)"),
    ("--fps", "the output is always 25 video frames per second with 20 ms audio frames"),
    ("--modelres", "the model's resolution follows the MuseTalk weights"),
    ("--modelfile", "the weights are found under --models_dir"),
    ("--W", "the size of LiveTalking's desktop window"),
    ("--H", "the size of LiveTalking's desktop window"),
    ("--audio_output_device", "for LiveTalking's virtualcam transport, not served here"),
)


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        metavar="FILE.yaml",
        help="read options from a YAML file: keys are option names (listenport: 8010, stun: [...] for a "
        "repeatable one, no_asr: true for a switch); the command line overrides the file",
    )
    ignored = p.add_argument_group("LiveTalking options accepted and ignored (a warning at start says so)")
    for flag, why in IGNORED:
        ignored.add_argument(flag, dest=f"ignored{flag.replace('-', '_')}", default=None, metavar="VALUE", help=why)


def ignored_notices(args: argparse.Namespace) -> tuple[str, ...]:
    """One line per LiveTalking option given that this server ignores."""
    return tuple(
        f"{flag} {value}: a LiveTalking option this server ignores ({why})"
        for flag, why in IGNORED
        if (value := getattr(args, f"ignored{flag.replace('-', '_')}")) is not None
    )


def _option(parser: argparse.ArgumentParser, key: str) -> argparse.Action | None:
    """The option named `key` (a config file's key, or a flag without its dashes; hyphens read as underscores)."""
    name = str(key).replace("-", "_")
    actions = parser._option_string_actions
    return actions.get(f"--{name}") or actions.get(f"-{name}")


def _given(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations of the options on the command line."""
    flags = (arg.partition("=")[0] for arg in argv if arg.startswith("-"))
    return {action.dest for flag in flags if (action := _option(parser, flag.lstrip("-"))) is not None}


def with_config_file(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> list[str]:
    """The command line, preceded by the options of its --config file, so that its own come last and win (a
    repeatable option given on the command line replaces the file's list)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    finder = argparse.ArgumentParser(add_help=False)
    finder.add_argument("-c", "--config", type=Path, default=None)
    path = finder.parse_known_args(argv)[0].config
    if path is None:
        return argv
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        parser.error(f"--config {path}: {e}")
    if not isinstance(values, dict):
        parser.error(f"--config {path}: expected option names and values (a YAML mapping)")
    given = _given(parser, argv)
    tokens: list[str] = []
    for key, value in values.items():
        action = _option(parser, key)
        if action is None or action.dest in ("config", "help"):
            parser.error(f"--config {path}: unknown option {key!r} (keys are option names, e.g. listenport)")
        flag = action.option_strings[-1]
        if action.dest in given or value is None:
            continue
        if action.nargs == 0:  # a switch
            if not isinstance(value, bool):
                parser.error(f"--config {path}: {key} is a switch: true or false")
            tokens += [flag] if value else []
        elif isinstance(value, list):
            if not isinstance(action, argparse._AppendAction):
                parser.error(f"--config {path}: {key} takes one value, not a list")
            tokens += [t for item in value for t in (flag, str(item))]
        else:
            tokens += [flag, str(value)]
    return tokens + argv
