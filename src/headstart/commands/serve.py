"""`headstart serve MODEL`: an HTTP prediction server (uvicorn) for a run folder or a stored model."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from headstart.commands import add_backend_flags, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a run folder or stored model over HTTP (POST /predict)")
    p.add_argument("model", help="a run folder, or a model-store reference such as emoji@production")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--token",
        default=os.environ.get("HEADSTART_TOKEN"),
        help="require 'Authorization: Bearer TOKEN' (default: $HEADSTART_TOKEN, else none)",
    )
    p.add_argument("--max-mb", type=float, default=10.0, help="largest request body accepted, in MB")
    p.add_argument("--max-batch", type=int, default=64, help="most files in one /predict/batch request")
    p.add_argument(
        "--max-pixels",
        type=int,
        help="refuse images whose canvas is larger than this (default 40,000,000; guards against "
        "decompression bombs: a 100 kB PNG can claim 900 megapixels)",
    )
    p.add_argument(
        "--engine",
        choices=("auto", "onnx", "torch"),
        default="auto",
        help="auto: ONNX Runtime (on the CPU) when RUN/model.onnx was exported from this model and the "
        "device is the CPU, else PyTorch",
    )
    add_backend_flags(p, backend=False)
    p.add_argument("--json", action="store_true", help="print the start-up summary as JSON")
    p.set_defaults(func=cmd_serve)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from headstart.errors import HeadstartError
    from headstart.features import forward_device
    from headstart.serve import SERVE_MAX_PIXELS, create_app

    forward_device(args.engine, args.device)  # an absent device is refused before the model is loaded

    if args.max_pixels is not None and args.max_pixels < 1:
        raise HeadstartError(
            f"--max-pixels {args.max_pixels} would refuse every image",
            fix=f"give a positive pixel count (default {SERVE_MAX_PIXELS:,})",
        )
    app = create_app(
        args.model,
        token=args.token,
        max_bytes=int(args.max_mb * 1024 * 1024),
        max_batch=args.max_batch,
        engine=args.engine,
        max_pixels=args.max_pixels or SERVE_MAX_PIXELS,
        device=args.device,
    )
    pred = app.state.predictor
    summary = {
        "model": args.model,
        "url": f"http://{args.host}:{args.port}/",
        "engine": pred.engine,
        "device": str(pred.device),
        "modality": pred.model.modality,
        "classes": len(pred.classes),
        "token": bool(args.token),
    }
    if args.json:
        print_json(summary)
    else:
        print(
            f"serving {args.model} ({summary['modality']}, {summary['classes']} classes, {pred.engine} on "
            f"{pred.device}) "
            f"at {summary['url']}",
            flush=True,
        )
    if not _is_loopback(args.host) and not args.token:
        print(
            f"warning: listening on {args.host} without --token: anyone who can reach it can use the model",
            file=sys.stderr,
        )
    # One worker process: the model is loaded once, and forwards take turns under the predictor's lock.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", workers=1)
    return 0
