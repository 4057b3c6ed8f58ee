#!/usr/bin/env python
"""Start the web app (what `make run` runs): http://127.0.0.1:7860, opened in the browser.

    python launch.py [--host 127.0.0.1] [--port 7860] [--no-browser] [--auth USER:PASS]
                     [--checkpoint FOLDER] [--soundfont FILE.sf2] [--output-dir DIR]
                     [--max-upload-mb 16] [--concurrency 1] [--queue-size 16]

Local and private by default: it binds 127.0.0.1, never makes a share link and downloads
nothing (analytics off, system fonts, Gradio's own bundled assets). The model, the soundfont
and the output folder are checked before the server starts: a problem is one line on stderr
and exit status 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

EXIT_USER_ERROR = 2
AUTH_ENV = "PERCEIVER_MUSIC_AUTH"

# Before Gradio is imported: no analytics, no version check, no telemetry.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="launch.py", description="Start the perceiver-music web app.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    parser.add_argument("--auth", metavar="USER:PASS",
                        help=f"require this login (or set ${AUTH_ENV}=USER:PASS, which ps does not show)")
    parser.add_argument("--checkpoint", help="a checkpoint folder (default: the embedded model in assets/model)")
    parser.add_argument("--soundfont",
                        help="a .sf2 file (default: $PERCEIVER_MUSIC_SOUNDFONT, else FluidR3_GM, else TimGM6mb)")
    parser.add_argument("--output-dir", default="outputs/web",
                        help="where each session's files go, one folder per session (default ./outputs/web)")
    parser.add_argument("--max-upload-mb", type=float, default=16.0, help="largest primer upload (default 16)")
    parser.add_argument("--concurrency", type=int, default=1, help="generations at a time (default 1); others wait")
    parser.add_argument("--queue-size", type=int, default=16, help="requests that may wait (default 16)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.queue_size < 1 or args.max_upload_mb <= 0:
        parser.error("--concurrency and --queue-size must be at least 1, --max-upload-mb more than 0")
    return args


def parse_auth(text: str | None) -> tuple[str, str] | None:
    from perceiver_music.errors import BadRequestError

    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise BadRequestError("--auth must be USER:PASS with both parts given")
    return user, password


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def prepare(args: argparse.Namespace):
    """Check what the app needs and load the model once (before Gradio is even imported);
    raise a UserFacingError if something is missing."""
    from perceiver_music.atomic_io import ensure_output_dir
    from perceiver_music.checkpoint import ModelCache
    from perceiver_music.engine import load_model
    from perceiver_music.render import preload

    checkpoint_path = Path(args.checkpoint).expanduser() if args.checkpoint else None
    models = ModelCache()
    checkpoint = load_model(checkpoint_path, args.device, models)  # the first request starts at once
    soundfont = preload(Path(args.soundfont).expanduser() if args.soundfont else None)  # and libfluidsynth
    output_dir = ensure_output_dir(Path(args.output_dir).expanduser()).resolve()

    from app.web import WebConfig

    config = WebConfig(checkpoint=checkpoint_path, soundfont=soundfont, output_dir=output_dir,
                       max_upload_mb=args.max_upload_mb, concurrency=args.concurrency,
                       queue_size=args.queue_size, device=args.device)
    return config, models, checkpoint


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up probes
    log = logging.getLogger("perceiver_music.web")
    from perceiver_music.errors import UserFacingError

    try:
        auth = parse_auth(args.auth or os.environ.get(AUTH_ENV))
        config, models, checkpoint = prepare(args)
    except UserFacingError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR

    from app.web import build_app, launch_options

    if not _is_loopback(args.host) and auth is None:
        log.warning("serving on %s without --auth: anyone who can reach this port can use the app", args.host)
    log.info("model %s (sha256 %s…), soundfont %s, outputs in %s, %d example primer(s)",
             checkpoint.path, checkpoint.sha256[:12], config.soundfont, config.output_dir, len(config.examples))
    demo = build_app(config, models)
    try:
        # quiet: Gradio's own banner advertises a public link, which this app never makes;
        # the one line below says where it is served instead.
        demo.launch(server_name=args.host, server_port=args.port, auth=auth, inbrowser=not args.no_browser,
                    quiet=True, prevent_thread_lock=True, **launch_options(config))
    except OSError as error:
        reason = "the port is in use; pass another with --port" if "empty port" in str(error) else str(error)
        print(f"error: cannot serve on {args.host}:{args.port}: {reason}", file=sys.stderr)
        return EXIT_USER_ERROR
    reach = "this machine only" if _is_loopback(args.host) else f"any machine that can reach {args.host}"
    print(f"perceiver-music is serving on {demo.local_url} ({reach}; Ctrl+C stops it)", flush=True)
    demo.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
