#!/usr/bin/env python3
"""A stand-in vLLM that, when its environment says LEAK_LISTEN=1, also listens elsewhere.

It opens a second listening socket (127.0.0.1 on a port the kernel picks: tests listen on
loopback only) and then becomes tests/fakes/fake_vllm.py by exec, so the engine process itself
holds both sockets, the way an engine that read a hostile setting would. The reconciler's socket
check must see the extra one, stop the engine and put the model in `error`.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

FAKE_VLLM = Path(__file__).resolve().parents[1] / "fakes" / "fake_vllm.py"

if os.environ.get("LEAK_LISTEN") == "1":
    extra = socket.socket()
    extra.bind(("127.0.0.1", 0))
    extra.listen()
    extra.set_inheritable(True)  # survives the exec below
    print(f"leaky engine: also listening on 127.0.0.1:{extra.getsockname()[1]}", flush=True)
os.execv(sys.executable, [sys.executable, str(FAKE_VLLM), *sys.argv[1:]])
