"""The avatar command line (``python -m musetalk.avatar``, ``musetalk-avatar``): prepare, demo and list."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from core.units import VIDEO_FPS
from musetalk.avatar import (
    DEFAULT_AVATARS_DIR,
    Avatar,
    AvatarError,
    list_avatars,
    load_avatar,
)
from musetalk.avatar_demo import ensure_demo
from musetalk.avatar_prepare import DEFAULT_MODELS_DIR, PrepareOptions, prepare_avatar
from musetalk.cli import ArgumentParser
from musetalk.config import VERSIONS
from musetalk.face import OVAL_MASK, PARSING_MODES


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m musetalk.avatar", description="Prepare and list avatars.")
    p.add_argument("--avatars_dir", type=Path, default=DEFAULT_AVATARS_DIR)
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="build an avatar from a video or an image")
    prep.add_argument("--source", type=Path, required=True, help="video file (mp4, webm, ...) or image (png, jpg)")
    prep.add_argument("--avatar_id", required=True)
    prep.add_argument("--version", choices=VERSIONS, default="v15")
    prep.add_argument("--bbox_shift", type=int, default=0, help="v1 only: move the mask's upper edge down (px)")
    prep.add_argument("--extra_margin", type=int, default=10, help="v15 only: pixels added under the chin")
    prep.add_argument(
        "--parsing_mode",
        choices=PARSING_MODES,
        default=None,
        help="BiSeNet blend mask (needs MODELS_DIR/face-parse-bisent); default jaw for v15, raw for v1, "
        "or the face-oval mask when the weights are absent",
    )
    prep.add_argument(
        "--cheek_width",
        type=int,
        default=None,
        help="jaw mode: half-width in px (of 512) of the middle band left unnarrowed; default 90 for v15, 80 for v1",
    )
    prep.add_argument("--fps", type=float, default=VIDEO_FPS)
    prep.add_argument("--max_frames", type=int, default=None)
    prep.add_argument("--overwrite", action="store_true")
    prep.add_argument("--models_dir", type=Path, default=DEFAULT_MODELS_DIR)
    sub.add_parser("demo", help="build avatars/demo from a bundled public-domain photo (offline)")
    sub.add_parser("list", help="list prepared avatars")
    return p


def _describe(avatar: Avatar) -> str:
    m = avatar.manifest
    latents = ",".join(m["latents"]) or "none"
    return (
        f"{avatar.avatar_id}\t{m['n_frames']} frames\t{m['width']}x{m['height']}\t{m['fps']:g} fps\t"
        f"{m['version']}\tlatents: {latents}\tmask: {m.get('mask', OVAL_MASK)}\tsource: {m['source']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "prepare":
            t = time.perf_counter()
            options = PrepareOptions(
                args.version,
                args.bbox_shift,
                args.extra_margin,
                args.fps,
                args.max_frames,
                args.parsing_mode,
                args.cheek_width,
                args.models_dir,
                args.overwrite,
            )
            path = prepare_avatar(args.source, args.avatar_id, args.avatars_dir, options)
            print(f"prepared {path} in {time.perf_counter() - t:.1f} s")
        elif args.command == "demo":
            path, built = ensure_demo(args.avatars_dir)
            print(f"{'built' if built else 'already there:'} {path}")
        else:
            ids = list_avatars(args.avatars_dir)
            if not ids:
                print(f"no avatars in {args.avatars_dir}")
            for avatar_id in ids:
                try:
                    print(_describe(load_avatar(avatar_id, args.avatars_dir)))
                except AvatarError as e:
                    print(f"{avatar_id}\tdamaged: {e}")
    except (AvatarError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
