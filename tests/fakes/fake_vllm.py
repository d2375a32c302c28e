#!/usr/bin/env python3
"""A stand-in for the `vllm` executable, for hosts where vLLM cannot run (no CUDA GPU).

It accepts exactly the argv shape the reconciler gives `vllm serve`:
    vllm serve MODEL --host H --port P --tensor-parallel-size N [--flag [value]]...
where every extra flag must be one of reconciler.engines.vllm.PARAMETERS (or its --no- form
where vLLM has one); anything else fails like vLLM's argparse does (exit 2, "unrecognized
arguments").

On start it prints one JSON line to stdout, `{"fake_vllm": {"argv": [...], "env": {...}}}`, with
the argv after the program name and the environment vLLM would care about
(CUDA_VISIBLE_DEVICES and the reconciler markers). Then it serves the OpenAI-shaped endpoints
vLLM serves (standin_server.py). Test knobs: FAKE_VLLM_STARTUP_S, FAKE_VLLM_IGNORE_SIGTERM,
FAKE_VLLM_EXIT_IF_EXISTS (see standin_server.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository
sys.path.insert(0, str(Path(__file__).resolve().parent))  # standin_server

from standin_server import StandIn, serve

from reconciler.engines.vllm import PARAMETERS, STYLE


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vllm")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve")
    serve_cmd.add_argument("model")
    serve_cmd.add_argument("--host", required=True)
    serve_cmd.add_argument("--port", type=int, required=True)
    serve_cmd.add_argument("--tensor-parallel-size", type=int, required=True)
    for key in sorted(PARAMETERS):
        if key in STYLE.switches:
            serve_cmd.add_argument(f"--{key}", action="store_true")
            if key in STYLE.negatable:
                serve_cmd.add_argument(f"--no-{key}", action="store_true")
        elif key in STYLE.multi_value:
            serve_cmd.add_argument(f"--{key}", nargs="+")
        else:
            serve_cmd.add_argument(f"--{key}")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    standin = StandIn(
        name="vllm",
        title="vLLM",
        model=args.model,
        served=args.served_model_name or [args.model],
        host=args.host,
        port=args.port,
        owned_by="vllm",
    )
    return serve(standin, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
