"""`python -m train.review --run RUN_DIR --cache STORE ...`: a local page to look at a run (`train.review_app`)."""

from __future__ import annotations

import argparse
import secrets
import socket
import sys
from pathlib import Path

import uvicorn

from cache.bucket import store_location
from cache.exits import Ending, ends
from train.data import UsageError
from train.review_app import PageSettings, build_app
from train.run_review import open_review

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="python -m train.review",
        description=(
            "Serve a page to look at a finished run: each model's metrics and figures, the run's tables, each "
            "store's splits; its test videos, the mistakes first, the most confidently wrong first, with their "
            "frames; one video's frames with their own scores, face box and Grad-CAM; and a form to check a new "
            "video. Ends on Ctrl-C (exit status 130; 2 on bad input)."
        ),
    )
    main.add_argument("--run", type=Path, required=True, help="RUN_DIR of train/run.py, or one model's RUN_DIR/MODEL")
    main.add_argument("--cache", type=store_location, nargs="+", required=True, help="the stores to look at")
    main.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    main.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    main.add_argument(
        "--token", help="the token every request must carry (needed for a --host other than this machine's)"
    )
    main.add_argument("--max-upload-mb", type=float, default=500, help="largest video to check (default 500 MB)")
    main.add_argument("--batch-size", type=int, default=8, help="videos per forward pass when scoring a store")
    return main


def check_address(host: str, port: int) -> None:
    """Refuse a host and port the page cannot listen on as bad input, before the models load, rather than as the
    server's own error once they have."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UsageError(f"--host {host} --port {port}: cannot listen there: {error.strerror or error}") from error


@ends("review")
def main(argv: list[str] | None, ending: Ending) -> int:
    args = parser().parse_args(argv)
    ending.kept = "the page is closed; it wrote nothing"
    if args.max_upload_mb <= 0 or args.batch_size < 1 or not 0 <= args.port < 65536:
        raise UsageError("--max-upload-mb must be above 0, --batch-size at least 1, --port 0..65535")
    check_address(args.host, args.port)
    token = args.token
    if token is None and args.host not in LOOPBACK:
        token = secrets.token_urlsafe(18)
    review = open_review(args.run, args.cache, args.batch_size)
    app = build_app(review, PageSettings(args.max_upload_mb, token))
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning"))
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"review: http://{host}:{args.port}/{'' if token is None else f'?token={token}'}", flush=True)
    try:
        server.run()
    finally:
        review.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
