#!/usr/bin/env python3
"""A stand-in for `python -m sglang.launch_server`, for hosts where SGLang cannot run.

It accepts exactly the argv shape the reconciler gives SGLang's launcher:
    launch_server --model-path M --host H --port P --tp-size N [--flag [value]]...
where every extra flag must be one of reconciler.engines.sglang.PARAMETERS; anything else fails
like SGLang's argparse does (exit 2, "unrecognized arguments"). The reconciler runs it as
$RECONCILER_SGLANG.

On start it prints one JSON line, `{"fake_sglang": {"argv": [...], "env": {...}}}`, then serves
SGLang's HTTP protocol: GET /health, GET /get_model_info, GET /v1/models, POST /v1/completions
and POST /v1/chat/completions (standin_server.py). Test knobs: FAKE_SGLANG_STARTUP_S,
FAKE_SGLANG_IGNORE_SIGTERM, FAKE_SGLANG_EXIT_IF_EXISTS.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository
sys.path.insert(0, str(Path(__file__).resolve().parent))  # standin_server

from standin_server import StandIn, serve

from reconciler.engines.sglang import PARAMETERS, STYLE


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sglang.launch_server")
    parser.add_argument("--model-path", "--model", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tp-size", "--tensor-parallel-size", type=int, required=True)
    for key in sorted(PARAMETERS):
        if key in STYLE.switches:
            parser.add_argument(f"--{key}", action="store_true")
        elif key in STYLE.multi_value:
            parser.add_argument(f"--{key}", nargs="*")
        else:
            parser.add_argument(f"--{key}")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    served = args.served_model_name or args.model_path

    def model_info() -> object:
        return {
            "model_path": args.model_path,
            "tokenizer_path": args.tokenizer_path or args.model_path,
            "is_generation": not args.is_embedding,
            "weight_version": "default",
        }

    standin = StandIn(
        name="sglang",
        title="SGLang",
        model=args.model_path,
        served=[served],
        host=args.host,
        port=args.port,
        owned_by="sglang",
        routes={"/get_model_info": model_info},
    )
    return serve(standin, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
