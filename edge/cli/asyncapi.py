"""`swapd asyncapi`: print the AsyncAPI 3 document of the MQTT interface."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from edge.cli.base import Handler


def register_asyncapi(sub: Any, handlers: dict[str, Handler]) -> None:
    p = sub.add_parser("asyncapi", help="print the AsyncAPI 3 document of the MQTT interface")
    p.add_argument("--format", choices=["yaml", "json"], default="yaml")

    def run(args: argparse.Namespace) -> int:
        from edge.telemetry.asyncapi import render_json, render_yaml

        sys.stdout.write(render_yaml() if args.format == "yaml" else render_json())
        return 0

    handlers["asyncapi"] = run
