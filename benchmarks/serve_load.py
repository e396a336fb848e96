"""`nin serve` under load, beside its ceiling: the same model run by a plain onnxruntime loop.

    python benchmarks/serve_load.py                               # 1, 4, 16 and 64 clients, 20 s each
    python benchmarks/serve_load.py --clients 16 --seconds 60 --cam
    python benchmarks/serve_load.py --clients 1 3 --seconds 1 --images 20 --ceiling-seconds 0.5   # the test's

Starts `nin serve --weights fast --port 0` as its own process (with this Python, so PYTHONPATH picks the code
measured), on 127.0.0.1 only. Per row, `--clients` clients (asyncio, one keep-alive connection each, in this
process) post the first `--images` Fashion-MNIST test images as PNG files, one after another, for `--seconds`:
requests answered per second, the median and 99th percentile latency, the errors (any answer but 200, or a
failed connection), and the server's resident memory (VmRSS) before and after the row. `--cam` asks for the
class map too (`POST /predict?cam=1`, what the page asks). The ceiling, measured for `--ceiling-seconds` just
before and just after each row, the higher of the two (a shared machine's speed changes from minute to minute,
and a ceiling measured in a slow minute would flatter the server): the same network exported to ONNX, run by
onnxruntime one image at a time in a plain loop over the same PNG files, decoding included.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from nin.training.provenance import cpu_info


def test_pngs(count: int) -> list[bytes]:
    import nin

    images, _ = nin.load_fashion_mnist("test")
    pngs = []
    for image in images[:count]:
        buffer = io.BytesIO()
        Image.fromarray(image.numpy()).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


def onnx_session():
    """The shipped fast network, exported to ONNX, in an onnxruntime session."""
    import onnxruntime

    import nin
    from nin.inference.export import to_onnx

    run = nin.load_weights("fast")
    with tempfile.TemporaryDirectory() as tmp:
        path = to_onnx(run.model, run.config, run.spec, Path(tmp) / "fast.onnx")
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def ceiling(session, pngs: list[bytes], seconds: float) -> float:
    """Images per second of onnxruntime `session`, one PNG at a time, decoding included."""
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        with Image.open(io.BytesIO(pngs[done % len(pngs)])) as img:
            x = np.asarray(img, dtype=np.float32)[None, None] / 255
        session.run(["logits"], {"images": x})[0].argmax()
        done += 1
    return done / (time.perf_counter() - began)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


def requests(pngs: list[bytes], port: int, cam: bool) -> list[bytes]:
    """Each PNG as a whole HTTP/1.1 request: a multipart upload in the field 'image'."""
    out = []
    for data in pngs:
        body = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="i.png"\r\n\r\n' + data
                + b"\r\n--b--\r\n")  # fmt: skip
        head = (f"POST /predict{'?cam=1' if cam else ''} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
        out.append(head.encode() + body)
    return out


async def client(port: int, bodies: list[bytes], first: int, deadline: float, latencies: list[float],
                 errors: list[str]) -> None:  # fmt: skip
    """Posts bodies[first], bodies[first + 1], ... on one keep-alive connection until `deadline`."""
    i, conn = first, None
    while time.perf_counter() < deadline:
        began = time.perf_counter()
        try:
            if conn is None:
                conn = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = conn
            writer.write(bodies[i % len(bodies)])
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            await reader.readexactly(length)
            status = head.split(b" ", 2)[1].decode()
            if status == "200":
                latencies.append(time.perf_counter() - began)
            else:
                errors.append(status)
            if re.search(rb"(?i)connection: *close", head):
                writer.close()
                conn = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as e:
            errors.append(type(e).__name__)
            conn = None
        i += 1
    if conn is not None:
        conn[1].close()


async def load(port: int, bodies: list[bytes], clients: int, seconds: float) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.perf_counter() + seconds
    step = max(1, len(bodies) // clients)
    await asyncio.gather(*(client(port, bodies, c * step, deadline, latencies, errors) for c in range(clients)))
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, default=20.0, help="per row")
    parser.add_argument("--images", type=int, default=1000, help="the first N test images, posted in turn")
    parser.add_argument("--cam", action="store_true", help="ask for the class map too (?cam=1, as the page does)")
    parser.add_argument("--ceiling-seconds", type=float, default=5.0, help="before each row")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if not (0 < args.seconds <= 600 and 0 < args.ceiling_seconds <= 600 and all(0 < c <= 256 for c in args.clients)):
        parser.error("--seconds and --ceiling-seconds: 0 to 600; --clients: 1 to 256 each")

    cpu = cpu_info()
    pngs = test_pngs(args.images)
    print(f"{cpu['cpu_count']}-core {cpu['cpu']}; nin serve --weights fast (fp32, CPU), {len(pngs)} Fashion-MNIST "
          f"test PNGs, {'with' if args.cam else 'without'} the class map; {args.seconds:g} s per row")  # fmt: skip
    # the server starts while the ceiling's model is exported
    server = subprocess.Popen([sys.executable, "-m", "nin", "serve", "--weights", "fast", "--port", "0"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    rows = []
    try:
        session = onnx_session()
        port = int(re.search(r":(\d+)/", server.stdout.readline()).group(1))
        bodies = requests(pngs, port, args.cam)
        asyncio.run(load(port, bodies, 1, 1.0))  # warm-up
        print(f"{'clients':>7} {'requests':>9} {'req/s':>8} {'ceiling/s':>9} {'of it':>6} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'errors':>6} {'RSS start':>10} {'RSS end':>8}")  # fmt: skip
        for clients in args.clients:
            before = ceiling(session, pngs, args.ceiling_seconds)
            start = rss_mb(server.pid)
            began = time.perf_counter()
            latencies, errors = asyncio.run(load(port, bodies, clients, args.seconds))
            rate = len(latencies) / (time.perf_counter() - began)
            top = max(before, ceiling(session, pngs, args.ceiling_seconds))
            ms = sorted(1000 * t for t in latencies) or [float("nan")]
            p50, p99 = statistics.median(ms), ms[min(len(ms) - 1, int(0.99 * len(ms)))]
            row = {"clients": clients, "requests": len(latencies), "per_second": rate, "ceiling_per_second": top,
                   "p50_ms": p50, "p99_ms": p99, "errors": len(errors), "rss_start_mb": start,
                   "rss_end_mb": rss_mb(server.pid)}  # fmt: skip
            rows.append(row)
            print(f"{clients:>7} {len(latencies):>9,} {rate:>8,.0f} {top:>9,.0f} {rate / top:>6.1%} {p50:>8.1f} "
                  f"{p99:>8.1f} {len(errors):>6} {start:>7.0f} MB {row['rss_end_mb']:>5.0f} MB")  # fmt: skip
            if errors:
                print(f"        errors: {sorted(set(errors))}")
    finally:
        server.terminate()
        server.wait(10)
    if args.json:
        args.json.write_text(json.dumps({"cam": args.cam, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
