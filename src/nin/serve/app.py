"""`nin serve`: a local web page and a JSON API that classify an image and show its class map.

`POST /predict` takes one image file in the multipart field `image` and answers `{"top": [{"class", "prob"} x 3]}`:
the top-3 classes, as `Run.predict` gives them; `POST /predict?cam=1` (the page) adds
`"cam": {"class", "size", "png"}`, the class map of the top class (NiN's own explanation, nin/cam.py) laid over
the image as a PNG data URL (`"cam": null` where the run's maps are 1x1). Bad input gets an HTTP 4xx and
`{"error": "<one sentence>"}`, and the server goes on serving. `GET /` is the page (nin/serve/page.html: one
file, nothing fetched from elsewhere), `GET /info` the model's name, classes and limits.

Other web pages cannot use it: a request whose `Host` is not an address this server serves is refused (400,
Starlette's TrustedHostMiddleware: DNS rebinding), and so is a `POST /predict` whose `Origin` (or, without
one, `Referer`) is not the page's own (403: a form or script of another site). Programs send neither header
and are served.

Memory is bounded, so that no upload can take the server down, and time too, so that slow or idle clients cannot
lock others out: a connection must send its request's headers (at most 16 kB, h11's limit) within `HEADER_TIMEOUT`
seconds of its start or of its previous answer, else it is closed, and uvicorn keeps at most `CONNECTIONS`
connections (503 beyond); `WORKERS` uploads are read, decoded and classified at a time (and beside them
`SMALL_WORKERS` whose Content-Length is at most `SMALL_UPLOAD`), the others wait up to `QUEUE_WAIT` seconds for
their turn (then 503) before a byte of their body is read; a body over `MAX_UPLOAD` bytes
is refused (413) from its Content-Length, and the read stops there whatever the header said, or after
`READ_TIMEOUT` seconds (408); images over `MAX_PIXELS` are refused from their header, before they are decoded
(data.images.open_image, then the run's preprocessing: data/preprocess.py), and an answer that takes over
`DECODE_TIMEOUT` seconds is 503 (its slot stays taken until its thread ends: a thread cannot be stopped). Small
work is not handed to a thread: an image of at most `INLINE_PIXELS` for a network of at most `INLINE_MACS`, or a
file that is not an image, is answered on the event loop, with the other small uploads read in the same turn in
one forward pass (`Batch`). Starlette and uvicorn are the serve extra's.
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

import torch
import torch.nn.functional as F

from nin.api import Run
from nin.data.images import DAMAGED, FORMATS, MAX_PIXELS
from nin.errors import NinError
from nin.inference.cam import class_maps
from nin.models.nin import layer_summary

EXTRA = "pip install 'nin[serve]' (starlette, uvicorn and python-multipart)"
MAX_UPLOAD = 10 * 1024 * 1024  # bytes of request body
WORKERS = 4  # uploads read, decoded and classified at once: bounds the memory that concurrent uploads take
# and beside them, uploads whose Content-Length is at most SMALL_UPLOAD (32 x 0.25 MB): more small uploads at
# once make larger batches (Batch); a small file of a large image still takes one of the WORKERS to be decoded
SMALL_WORKERS, SMALL_UPLOAD = 32, 256 * 1024
QUEUE_WAIT = 30.0  # seconds an upload waits for one of the WORKERS before it gets 503
READ_TIMEOUT = 30.0  # seconds to receive an upload's body (10 MB at 350 kB/s) before 408
DECODE_TIMEOUT = 20.0  # seconds to decode and classify an upload (a 40-megapixel PNG: 2-3 s here) before 503
HEADER_TIMEOUT = 10.0  # seconds a connection has to send its request's headers (a slow or idle one is closed)
CONNECTIONS = 500  # open connections uvicorn keeps (limit_concurrency), 503 beyond: about 20 kB each at most
# an upload of at most INLINE_PIXELS (by its header) to a network of at most INLINE_MACS per image is classified
# on the event loop itself, batched with those read in the same turn (about 1 ms each for the fast weights):
# handing each to a thread and back cost more than the work (docs/serve.md#under-load); larger work goes to a
# thread, within DECODE_TIMEOUT
INLINE_PIXELS = 256 * 256
INLINE_MACS = 20_000_000
LOCAL = ("localhost", "127.0.0.1", "[::1]")  # the names of this machine a browser on it uses
SHOWN = 224  # side length of the class-map PNG
PAGE = Path(__file__).with_name("page.html")
# inferno-like colour scale from low to high evidence: black, purple, red, orange, pale yellow
COLOURS = torch.tensor([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]]) / 255


class Refused(Exception):
    """A request the server answers with `status` and {"error": message}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_extra() -> None:
    try:
        import python_multipart  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise NinError(f"nin serve needs the serve extra: {EXTRA}") from None


def answer(run: Run, data: bytes, cam: bool = True) -> dict:
    """The answer for one image file's bytes: the top-3 classes, and with `cam` the class map of the first."""
    x = inputs(run, data)
    with torch.inference_mode():  # one forward pass: the class maps, whose means are the logits
        maps, logits = class_maps(evaluating(run), x)
    return reply(run, x, maps, logits, cam)


def inputs(run: Run, data: bytes) -> torch.Tensor:
    """One image file's bytes as the network's (1, C, S, S) input, as nin predict and training's test pass make it."""
    upload = io.BytesIO(data)
    upload.name = "the uploaded file"  # how the decoder's errors name it
    try:
        return run.preprocess([upload])
    except NinError as e:
        raise Refused(400, str(e)) from None


def evaluating(run: Run) -> torch.nn.Module:
    if run.model.training:  # once: eval() walks every layer, a tenth of a small image's time
        run.model.eval()
    return run.model


def reply(run: Run, x: torch.Tensor, maps: torch.Tensor, logits: torch.Tensor, cam: bool) -> dict:
    """The answer from one image's input `x` (1, C, S, S), its class maps and logits."""
    probs, indices = logits[0].softmax(dim=0).topk(min(3, len(run.classes)))
    top = [{"class": run.classes[i], "prob": p} for p, i in zip(probs.tolist(), indices.tolist())]
    if not cam:
        return {"top": top}
    if maps.shape[-1] < 2:
        return {"top": top, "cam": None, "note": "this run's class maps are 1x1: they cannot show where"}
    k = int(indices[0])
    return {"top": top, "cam": {"class": top[0]["class"], "size": list(maps.shape[-2:]), "png": overlay(x, maps[:, k])}}


class Batch:
    """The inputs of the small uploads read in one turn of the event loop, classified in one forward pass at
    its next turn: a pass over 4 images costs about 2.5 times one over 1 (the fast weights: 1.1 against 0.47 ms;
    docs/serve.md#under-load)."""

    def __init__(self, run: Run):
        self.run, self.waiting = run, []

    def __call__(self, x: torch.Tensor) -> asyncio.Future:
        """A future of `x`'s class maps and logits, (1, classes, h, w) and (1, classes)."""
        loop = asyncio.get_running_loop()
        if not self.waiting:
            loop.call_soon(self.classify)
        self.waiting.append((x, loop.create_future()))
        return self.waiting[-1][1]

    def classify(self) -> None:
        waiting, self.waiting = self.waiting, []
        try:
            with torch.inference_mode():
                maps, logits = class_maps(evaluating(self.run), torch.cat([x for x, _ in waiting]))
        except Exception as e:  # a bug of ours: each request gets its 500, none waits for ever
            for _, future in waiting:
                if not future.done():
                    future.set_exception(e)
            return
        for i, (_, future) in enumerate(waiting):
            if not future.done():  # a cancelled request: its client went away
                future.set_result((maps[i : i + 1], logits[i : i + 1]))


def pixels(data: bytes) -> int | None:
    """The pixel count an image file's header gives (nothing is decoded); None where the header does not open,
    as the decoder then fails at once, at the same point, and says what is wrong."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            return img.width * img.height
    except (Image.DecompressionBombError, *DAMAGED):
        return None


def overlay(x: torch.Tensor, heat: torch.Tensor) -> str:
    """The image `x` (1, C, S, S) in [0, 1], in gray, with the class map `heat` (1, h, w) upsampled over it, as
    a PNG data URL; the map is scaled from its own minimum (dark) to its maximum (bright)."""
    from PIL import Image

    gray = F.interpolate(x.float().mean(dim=1, keepdim=True), size=(SHOWN, SHOWN), mode="bilinear")[0, 0]
    heat = F.interpolate(heat[None].float(), size=(SHOWN, SHOWN), mode="bilinear", align_corners=False)[0, 0]
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp(min=1e-12)
    position = heat * (len(COLOURS) - 1)
    low = position.floor().long().clamp(max=len(COLOURS) - 2)
    colour = torch.lerp(COLOURS[low], COLOURS[low + 1], (position - low)[..., None])  # (SHOWN, SHOWN, 3)
    rgb = 0.4 * gray[..., None] + 0.6 * colour
    png = io.BytesIO()
    # zlib level 1: the same pixels as the default 6, a 40% larger file, encoded 5x faster (2 ms, not 9)
    Image.fromarray((rgb.clamp(0, 1) * 255).round().byte().numpy(), "RGB").save(png, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()


def allowed_hosts(host: str, extra: Iterable[str] = ()) -> list[str]:
    """The names a request's Host header may give: this machine's local names, the address served (for 0.0.0.0
    or ::, this machine's name, full name and addresses) and `extra` (`nin serve --allow-host`)."""
    names = [*LOCAL, *extra]
    if host in ("0.0.0.0", "::", ""):
        names += [socket.gethostname(), socket.getfqdn()]
        try:
            names += [
                f"[{a[4][0]}]" if ":" in a[4][0] else a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None)
            ]
        except OSError:  # a name that does not resolve: its addresses are unknown
            pass
    else:
        names.append(f"[{host}]" if ":" in host else host)
    return sorted({name.lower() for name in names})


def other_site(request) -> str | None:
    """The site a request comes from when that is not this server's page: its `Origin`, or without one its
    `Referer`; None for the page itself and for programs (curl, urllib), which send neither."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return None
    url = urlsplit(origin)
    own = url.scheme in ("http", "https") and url.netloc.lower() == request.headers.get("host", "").lower()
    return None if own else origin


async def read_upload(request) -> bytes:
    """The bytes of the file in the multipart field `image`, reading at most MAX_UPLOAD bytes of body, within
    READ_TIMEOUT seconds."""
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request

    too_big = f"the upload is over the limit of {MAX_UPLOAD // 2**20} MB; send a smaller image"
    chunks, size = [], 0
    try:
        async with asyncio.timeout(READ_TIMEOUT):  # a client that sends slowly holds one of the WORKERS
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_UPLOAD:
                    raise Refused(413, too_big)
                chunks.append(chunk)
    except TimeoutError:
        raise Refused(408, f"the upload took over {READ_TIMEOUT:g} s; send a smaller image") from None
    except ClientDisconnect:
        raise Refused(400, "the upload stopped before its end") from None
    body = b"".join(chunks)
    del chunks

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    how = "send the image as multipart/form-data in the field 'image' (curl -F image=@shirt.png URL/predict)"
    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except HTTPException as e:  # the multipart parser's complaint
        raise Refused(400, f"the body is not valid multipart/form-data ({e.detail}); {how}") from None
    try:
        file = form.get("image")
        if not isinstance(file, UploadFile):
            raise Refused(400, f"no file in the field 'image'; {how}")
        return await file.read()
    finally:
        await form.close()  # the parser's temporary file, if it wrote one


def app(run: Run, hosts: Iterable[str] = LOCAL):
    """The Starlette application serving `run` to requests whose Host is one of `hosts` (see allowed_hosts)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    page, batch = PAGE.read_bytes(), Batch(run)
    gate, small_slots = asyncio.Semaphore(WORKERS), asyncio.Semaphore(SMALL_WORKERS)
    cheap = sum(row["macs"] for row in layer_summary(run.model, run.config.resize, run.spec.channels)) <= INLINE_MACS
    name = run.card["name"] if run.card else run.path.resolve().name  # a name, not the server's file path

    async def index(request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    async def info(request) -> Response:
        return JSONResponse({"model": name, "classes": run.classes, "input": run.config.resize,
                             "max_upload": MAX_UPLOAD, "max_pixels": MAX_PIXELS})  # fmt: skip

    async def classify(request) -> dict:
        site = other_site(request)
        if site:  # a form or script of another web page, posting through the user's browser
            raise Refused(403, f"a request from another site ({site[:100]}); this server answers its own page "
                          "and programs that send no Origin header")  # fmt: skip
        cam = request.query_params.get("cam") == "1"
        length = request.headers.get("content-length", "0")
        if not length.isdigit():
            raise Refused(400, f"Content-Length {length[:20]!r} is not a number of bytes")
        if int(length) > MAX_UPLOAD:  # refused before it waits its turn: its body is never read
            raise Refused(413, f"the upload is over the limit of {MAX_UPLOAD // 2**20} MB; send a smaller image")
        small = "content-length" in request.headers and int(length) <= SMALL_UPLOAD
        slots = small_slots if small else gate
        await turn(slots)  # before a byte of the body is read
        owned = True  # the slot is this request's to release, until a thread takes it over
        try:
            data = await read_upload(request)
            if cheap and (pixels(data) or 0) <= INLINE_PIXELS:  # on the event loop, no thread (not an image: too)
                x = inputs(run, data)
                return reply(run, x, *await batch(x), cam)
            if small:  # a small file of a large image: it needs one of the WORKERS to be decoded
                await turn(gate)
            else:
                owned = False
            return await in_thread(data, cam)
        finally:
            if owned:
                slots.release()

    async def turn(slots: asyncio.Semaphore) -> None:
        try:
            await asyncio.wait_for(slots.acquire(), QUEUE_WAIT)
        except TimeoutError:
            raise Refused(503, "the server is busy with other uploads; try again shortly") from None

    async def in_thread(data: bytes, cam: bool) -> dict:
        """answer() in a worker thread, which releases the caller's slot of the WORKERS when it ends, even past
        DECODE_TIMEOUT: a thread cannot be stopped, and while it runs its memory is counted."""
        work = asyncio.ensure_future(run_in_threadpool(answer, run, data, cam))
        work.add_done_callback(lambda done: (done.cancelled() or done.exception(), gate.release()))
        try:
            return await asyncio.wait_for(asyncio.shield(work), DECODE_TIMEOUT)
        except TimeoutError:
            raise Refused(503, f"the image took over {DECODE_TIMEOUT:g} s to decode and classify; send a smaller "
                          "image") from None  # fmt: skip

    async def predict(request) -> Response:
        try:
            return JSONResponse(await classify(request))
        except Refused as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)

    async def http_error(request, e: HTTPException) -> Response:  # 404, 405: JSON like every other error
        return JSONResponse({"error": f"{request.method} {request.url.path}: {e.detail}"}, status_code=e.status_code)

    async def server_error(request, e: Exception) -> Response:  # a bug of ours: JSON too, the traceback in the log
        return JSONResponse({"error": f"the server failed on this request ({type(e).__name__}); see its log"},
                            status_code=500)  # fmt: skip

    routes = [Route("/", index), Route("/info", info), Route("/predict", predict, methods=["POST"])]
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))],
                     exception_handlers={HTTPException: http_error, Exception: server_error})  # fmt: skip


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port (port 0: any free one)."""
    sock = None
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY on the connections only then; without it every answer
        # on a kept-alive connection waited 40 ms for the client's delayed ACK (Nagle), 93 requests/s at most
        sock = socket.socket(family, kind, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
        sock.bind(address)
        sock.listen()
        return sock
    except OSError as e:
        if sock is not None:
            sock.close()
        raise NinError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --host or --port") from None


def server(run: Run, hosts: Iterable[str] = LOCAL):
    """A uvicorn server of `run`; `server(run).run(sockets=[listen(host, port)])` serves until Ctrl-C."""
    import uvicorn

    config = uvicorn.Config(app(run, hosts), log_level="warning", timeout_graceful_shutdown=2, http=protocol(),
                            limit_concurrency=CONNECTIONS)  # fmt: skip
    return uvicorn.Server(config)


def protocol() -> type:
    """uvicorn's HTTP/1.1 protocol (h11), closing a connection that has not sent its request's headers
    HEADER_TIMEOUT seconds after it opened or after its previous answer: idle, half-open and slow-header
    connections go, instead of holding CONNECTIONS until every other client gets 503. (uvicorn's own
    timeout_keep_alive starts only after an answer, and any byte received stops it.)"""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
            super().connection_lost(exc)

        def arm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
            self.deadline = self.loop.call_later(HEADER_TIMEOUT, self.expire)

        def expire(self) -> None:
            if self.conn.their_state is h11.IDLE:  # still no whole request line and headers
                self.timeout_keep_alive_handler()  # uvicorn's: h11 told, the connection closed

    return Protocol


def serve_forever(run: Run, sock: socket.socket, hosts: Iterable[str] = LOCAL) -> None:
    # one thread per forward pass: the WORKERS run side by side, and a pass split over two threads waited for
    # the second to be scheduled (on a shared 2-core machine: 10 requests/s from one client, not 160)
    torch.set_num_threads(1)
    server(run, hosts).run(sockets=[sock])
