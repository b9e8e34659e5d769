"""`headstart serve MODEL`: an HTTP prediction server (uvicorn) for a run folder or a stored model."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from dataclasses import dataclass

from headstart.commands import print_json, verb
from headstart.config import device_option, json_option, option


@dataclass(kw_only=True)
class ServeOptions:
    """serve a run folder or stored model over HTTP (POST /predict)"""

    model: str = option(help="a run folder, or a model-store reference such as emoji@production")
    host: str = option("127.0.0.1", help="address to listen on (default: loopback only)")
    port: int = option(8000)
    token: str | None = option(
        None, help="require 'Authorization: Bearer TOKEN' (default: $HEADSTART_TOKEN, else none)"
    )
    max_mb: float = option(10.0, help="largest request body accepted, in MB")
    max_text_mb: float = option(
        1.0,
        help="a text model's largest text (its JSON), in MB; a batch may hold --max-batch of them. The "
        "model reads only its first tokens; a larger body only costs parsing time",
    )
    max_batch: int = option(64, help="most files in one /predict/batch request")
    max_pixels: int | None = option(
        None,
        help="refuse images whose canvas is larger than this (default 40,000,000; guards against "
        "decompression bombs: a 100 kB PNG can claim 900 megapixels)",
    )
    engine: str = option(
        "auto",
        choices=("auto", "onnx", "torch"),
        help="auto: ONNX Runtime (on the CPU) when RUN/model.onnx was exported from this model and the "
        "device is the CPU, else PyTorch",
    )
    device: str = device_option()
    json: bool = json_option("print the start-up summary as JSON")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@verb(ServeOptions)
def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from headstart.errors import HeadstartError
    from headstart.features import forward_device
    from headstart.serve import SERVE_MAX_PIXELS, create_app

    forward_device(args.engine, args.device)  # an absent device is refused before the model is loaded
    if args.token is None:
        args.token = os.environ.get("HEADSTART_TOKEN")

    if args.max_pixels is not None and args.max_pixels < 1:
        raise HeadstartError(
            f"--max-pixels {args.max_pixels} would refuse every image",
            fix=f"give a positive pixel count (default {SERVE_MAX_PIXELS:,})",
        )
    if not args.max_text_mb > 0:  # also NaN
        raise HeadstartError(
            f"--max-text-mb {args.max_text_mb:g} would refuse every text",
            fix="give a positive size in MB (default 1)",
        )
    app = create_app(
        args.model,
        token=args.token,
        max_bytes=int(args.max_mb * 1024 * 1024),
        max_batch=args.max_batch,
        max_text_bytes=int(args.max_text_mb * 1024 * 1024),
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
