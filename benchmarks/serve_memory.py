"""Peak memory of `nin serve` under concurrent large uploads.

    python benchmarks/serve_memory.py                    # 40 clients at once, each a ~9 MB PNG, 3 rounds
    python benchmarks/serve_memory.py --clients 40 --megabytes 9 --rounds 3
    python benchmarks/serve_memory.py --megapixels 39.9   # the most pixels the server decodes, in a small file
    python benchmarks/serve_memory.py --megapixels 36 --mode RGBA --clients 8   # transparent; or --mode I;16
    python benchmarks/serve_memory.py --not-image        # 9 MB of random bytes each: every answer a 400

Starts `nin serve --weights fast --port 0` as its own process (with this Python, so PYTHONPATH picks the code
measured), sends one upload to warm it up, then `--rounds` times `--clients` uploads at the same moment (threads
behind a barrier), each a PNG of random RGB noise of about `--megabytes` MB (noise does not compress: the body
is that large), or with `--megapixels` a gradient of that many pixels (a small body that decodes to a large
image), in `--mode` RGB, RGBA (with a varying alpha: composited) or I;16 (16-bit gray: scaled to 8 bits). It
prints the server's resident memory (VmRSS) when idle and its peak (VmHWM, from /proc/PID/status: Linux only) after the
warm-up and after each round, the answers' HTTP statuses and the wall time.
"""

from __future__ import annotations

import argparse
import http.client
import io
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
from PIL import Image


def noise_png(megabytes: float, seed: int = 0) -> bytes:
    side = int((megabytes * 2**20 / 3) ** 0.5)
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def gradient_png(megapixels: float, mode: str = "RGB") -> bytes:
    """A gradient of `megapixels` in `mode` (RGB, RGBA or I;16): many pixels in a small file (the most a small
    upload decodes to)."""
    side = int((megapixels * 1e6) ** 0.5)
    ramp = np.add.outer(np.arange(side), np.arange(side)).astype(np.uint8)
    if mode == "I;16":
        img = Image.frombytes(mode, (side, side), (ramp.astype("<u2") * 257).tobytes())
    else:
        img = Image.fromarray(np.stack([ramp, ramp[::-1], ramp.T, ramp[:, ::-1]][: len(mode)], axis=-1), mode)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of process `pid`, in MB."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def post(port: int, body: bytes, kind: str, start: threading.Barrier | None = None) -> int | str:
    """One upload's HTTP status, sent once every client is ready (`start`)."""
    if start is not None:
        start.wait()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", "/predict", body=body, headers={"Content-Type": kind})
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError as e:  # a connection the server closed (uvicorn's limit) counts as refused
        return type(e).__name__
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--megabytes", type=float, default=9.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--megapixels", type=float, help="send a gradient of this many megapixels instead")
    parser.add_argument("--not-image", action="store_true", help="send --megabytes of random bytes instead")
    parser.add_argument("--mode", choices=["RGB", "RGBA", "I;16"], default="RGB", help="the gradient's mode")
    args = parser.parse_args()

    if args.not_image:
        image = np.random.default_rng(0).bytes(int(args.megabytes * 2**20))
    else:
        image = gradient_png(args.megapixels, args.mode) if args.megapixels else noise_png(args.megabytes)
    boundary = "nin-benchmark"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="noise.png"\r\n\r\n'.encode()
            + image + f"\r\n--{boundary}--\r\n".encode())  # fmt: skip
    kind = f"multipart/form-data; boundary={boundary}"
    server = subprocess.Popen([sys.executable, "-m", "nin", "serve", "--weights", "fast", "--port", "0"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        port = int(re.search(r":(\d+)/", server.stdout.readline()).group(1))
        idle = memory_mb(server.pid)
        print(f"body {len(body) / 2**20:.2f} MB per upload ({len(image) / 2**20:.2f} MB PNG), "
              f"{args.clients} clients at once, {args.rounds} rounds"
          + (f", {args.megapixels:g} megapixels {args.mode}" if args.megapixels else ""))  # fmt: skip
        print(f"idle:              VmRSS {idle['VmRSS']:7.1f} MB")
        warm = post(port, body, kind)
        print(f"after one upload:  VmHWM {memory_mb(server.pid)['VmHWM']:7.1f} MB (status {warm})")
        for r in range(args.rounds):
            start = threading.Barrier(args.clients)
            began = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                statuses = Counter(pool.map(partial(post, port, body, kind), [start] * args.clients))
            seconds = time.perf_counter() - began
            peak = memory_mb(server.pid)["VmHWM"]
            answers = ", ".join(f"{n} x {s}" for s, n in sorted(statuses.items(), key=str))
            print(f"round {r + 1}:           VmHWM {peak:7.1f} MB, {seconds:5.1f} s, answers: {answers}")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
