"""`nin serve`: a real uvicorn server in a thread answers real test images as `Run.predict` does, refuses bad
uploads with one JSON sentence and goes on serving, answers 50 clients at once; and a real browser drives the
page of `nin serve` started from the command line."""

import asyncio
import base64
import contextlib
import http.client
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nin
from helpers import require, require_system
from nin.cli import get_args_parser, main
from nin.data.types import Spec
from nin.inference.cam import class_maps
from nin.serve.app import EXTRA, MAX_UPLOAD, PAGE

require("uvicorn")

CLIENTS = 50


def png(image) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(data: bytes, field: str = "image", filename: str = "image.png") -> tuple[bytes, str]:
    boundary = "nin-test-boundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n\r\n'
    return head.encode() + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def request(port: int, method: str, path: str, body=None, headers=None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def post_image(port: int, data: bytes, path: str = "/predict", **kwargs) -> tuple[int, dict]:
    body, kind = multipart(data, **kwargs)
    return request(port, "POST", path, body, {"Content-Type": kind})


@pytest.fixture(scope="module")
def run() -> nin.Run:
    return nin.load_weights("fast")


@pytest.fixture(scope="module")
def test_images(run):
    """The first CLIENTS test images as PNG files, and the run's own top-3 for each."""
    images, _ = nin.load_fashion_mnist("test")
    return [png(image) for image in images[:CLIENTS]], [r["top"] for r in run.predict(images[:CLIENTS])]


@contextlib.contextmanager
def serving(run: nin.Run):
    """A real uvicorn server of `run`, in a thread, on a free port of 127.0.0.1: yields the port."""
    with served(run) as (port, _):
        yield port


@contextlib.contextmanager
def served(run: nin.Run):
    """As `serving`, yielding the port and the uvicorn server."""
    from nin.serve.app import listen, server

    sock = listen("127.0.0.1", 0)
    uvicorn_server = server(run)
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uvicorn_server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1], uvicorn_server
    finally:
        uvicorn_server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def port(run) -> int:
    """A server of the shipped fast weights."""
    with serving(run) as port:
        yield port


def assert_good_request(port, test_images, i: int = 0) -> None:
    files, expected = test_images
    status, answer = post_image(port, files[i])
    assert status == 200, answer
    assert [t["class"] for t in answer["top"]] == [t["class"] for t in expected[i]]
    assert [t["prob"] for t in answer["top"]] == pytest.approx([t["prob"] for t in expected[i]], abs=1e-6)


def test_top3_and_class_map_of_real_test_images(port, test_images):
    for i in range(5):
        assert_good_request(port, test_images, i)
    _, answer = post_image(port, test_images[0][0], "/predict?cam=1")  # what the page asks
    cam = answer["cam"]
    assert cam["class"] == answer["top"][0]["class"] and cam["size"] == [3, 3]  # the fast network's 3x3 maps
    with Image.open(io.BytesIO(base64.b64decode(cam["png"].removeprefix("data:image/png;base64,")))) as image:
        assert (image.format, image.size, image.mode) == ("PNG", (224, 224), "RGB")


def bomb() -> bytes:
    """A 7,000 x 7,000 PNG: 49 megapixels, 48 KB on the wire."""
    buffer = io.BytesIO()
    Image.new("L", (7000, 7000)).save(buffer, format="PNG")
    return buffer.getvalue()


def chunks_over_the_limit():
    for _ in range(MAX_UPLOAD // 2**20 + 1):
        yield b"x" * 2**20


@pytest.mark.parametrize(
    "case, status, fragment",
    [
        ("announced too large", 413, "over the limit of 10 MB"),
        ("streamed too large", 413, "over the limit of 10 MB"),
        ("not an image", 400, "the uploaded file: not a supported image format; nin reads PNG, JPEG, BMP or WebP"),
        ("truncated PNG", 400, "the uploaded file: cannot read it as an image"),
        ("decompression bomb", 400, "7000x7000 is over the limit of 40,000,000 pixels"),
        ("wrong field", 400, "no file in the field 'image'"),
        ("not multipart", 400, "no file in the field 'image'"),
        ("GET /predict", 405, "GET /predict: Method Not Allowed"),
    ],
)
def test_bad_requests_get_a_json_error_and_the_server_goes_on(port, test_images, case, status, fragment):
    good = test_images[0][0]
    if case == "announced too large":  # refused from the header: the body is never sent
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.putrequest("POST", "/predict")
        conn.putheader("Content-Type", "multipart/form-data; boundary=x")
        conn.putheader("Content-Length", str(MAX_UPLOAD + 1))
        conn.endheaders()
        response = conn.getresponse()
        answer = (response.status, json.loads(response.read()))
        conn.close()
    elif case == "streamed too large":  # no Content-Length: the read stops at the limit
        answer = request(port, "POST", "/predict", chunks_over_the_limit())  # http.client sends it chunked
    elif case == "not an image":
        answer = post_image(port, b"GIF? no: plain text")
    elif case == "truncated PNG":
        answer = post_image(port, good[: len(good) // 2])
    elif case == "decompression bomb":
        answer = post_image(port, bomb())
    elif case == "wrong field":
        answer = post_image(port, good, field="file")
    elif case == "not multipart":
        answer = request(port, "POST", "/predict", b'{"image": "boot.png"}', {"Content-Type": "application/json"})
    else:
        answer = request(port, "GET", "/predict")
    assert answer[0] == status and fragment in answer[1]["error"], answer
    assert_good_request(port, test_images)


def test_50_clients_at_once_all_get_their_answer(port, test_images):
    files, expected = test_images
    start = threading.Barrier(CLIENTS)

    def client(i: int) -> tuple[int, dict]:
        start.wait()  # every client sends at the same moment
        return post_image(port, files[i])

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(client, range(CLIENTS)))
    assert [status for status, _ in answers] == [200] * CLIENTS
    assert [a["top"][0]["class"] for _, a in answers] == [e[0]["class"] for e in expected]


def test_page_and_info(port, run):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/")
    response = conn.getresponse()
    page = response.read().decode()
    conn.close()
    assert response.status == 200 and response.getheader("content-type").startswith("text/html")
    assert page == PAGE.read_text()
    # one file, nothing fetched from elsewhere: every src and href is inline data, no external script or style
    assert all(url.startswith("data:") for url in re.findall(r'(?:src|href)="([^"]*)"', page))
    assert "<script src" not in page and "@import" not in page and "url(" not in page
    assert request(port, "GET", "/info") == (200, {"model": "fast", "classes": list(run.classes), "input": 28,
                                                   "max_upload": MAX_UPLOAD, "max_pixels": 40_000_000})  # fmt: skip


def test_the_class_map_only_when_asked(port, test_images, monkeypatch):
    """The class map costs most of an answer's time (its 224x224 PNG): the JSON API leaves it out unless
    asked (?cam=1, as the page asks), and the top-3 are the same either way."""
    from nin.serve import app as serve

    drawn = []
    monkeypatch.setattr(serve, "overlay", lambda *args, draw=serve.overlay: drawn.append(1) or draw(*args))
    plain = post_image(port, test_images[0][0])
    assert plain[0] == 200 and list(plain[1]) == ["top"] and drawn == []
    status, with_cam = post_image(port, test_images[0][0], "/predict?cam=1")
    assert status == 200 and with_cam["top"] == plain[1]["top"] and with_cam["cam"]["size"] == [3, 3] and drawn


def test_a_run_with_1x1_class_maps_gets_a_note_instead(test_images):
    """The seed's NiN at 67x67 (the quick preset's size) has 1x1 maps: nothing to show where."""
    from nin.serve.app import answer

    run = nin.Run(Path("untrained"), Path("untrained.pt"), nin.Config(resize=67), nin.NiN().eval(), [], None, Spec())
    result = answer(run, test_images[0][0])
    assert len(result["top"]) == 3 and result["cam"] is None and "1x1" in result["note"]


def test_a_failure_of_the_server_is_json_too(port, test_images, monkeypatch):
    from nin.serve import app as serve

    with monkeypatch.context() as m:
        m.setattr(serve, "overlay", lambda *args: 1 / 0)  # a bug, while the server runs
        answer = post_image(port, test_images[0][0], "/predict?cam=1")
    assert answer == (500, {"error": "the server failed on this request (ZeroDivisionError); see its log"})
    assert_good_request(port, test_images)


def test_defaults_listen_on_this_machine_only():
    args = get_args_parser().parse_args(["serve", "--weights", "fast"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)


def test_missing_extra_gets_one_message(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ImportError
    assert main(["serve", "--weights", "fast"]) == 2
    assert capsys.readouterr().err == f"nin: error: nin serve needs the serve extra: {EXTRA}\n"
    assert EXTRA == "pip install 'nin[serve]' (starlette, uvicorn and python-multipart)"


def test_port_in_use_gets_one_message(port, capsys):
    assert main(["serve", "--weights", "fast", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def browser_paths() -> tuple[str, str]:
    """Debian's chromium and chromedriver (make installs them as root) and selenium (the dev extra)."""
    chromium, driver = require_system("chromium", "chromedriver")
    require("selenium")
    return chromium, driver


@pytest.mark.slow  # starts nin serve and a browser
def test_the_page_in_a_real_browser(tmp_path, run):
    chromium, driver_path = browser_paths()
    from selenium import webdriver
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    images, _ = nin.load_fashion_mnist("test")
    (tmp_path / "boot.png").write_bytes(png(images[0]))
    expected = run.predict(images[:1])[0]["top"][0]["class"]
    server = subprocess.Popen([sys.executable, "-m", "nin", "serve", "--weights", "fast", "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,860"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = None
    try:
        line = server.stdout.readline()  # serving fast on http://127.0.0.1:PORT/ (Ctrl-C stops)
        url = re.search(r"http://\S+/", line)
        assert url, f"nin serve did not start: {line}{server.stderr.read() if server.poll() is not None else ''}"
        url = url.group(0)
        browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
        browser.get(url)
        wait = WebDriverWait(browser, 15)
        wait.until(lambda b: b.find_element(By.ID, "model").text.startswith("Model fast"))
        browser.find_element(By.ID, "file").send_keys(str(tmp_path / "boot.png"))
        wait.until(lambda b: b.find_element(By.ID, "status").text == "The answer for boot.png:")
        assert browser.find_element(By.ID, "top1").text == expected
        assert browser.execute_script("return document.getElementById('cam').naturalWidth") == 224
        if os.environ.get("NIN_SERVE_SCREENSHOT"):  # docs/serve.png: NIN_SERVE_SCREENSHOT=docs/serve.png
            browser.save_screenshot(os.environ["NIN_SERVE_SCREENSHOT"])

        pad = browser.find_element(By.ID, "pad")  # a drawn stroke: light on black
        ActionChains(browser).move_to_element_with_offset(pad, -60, -80).click_and_hold().move_by_offset(
            120, 0).move_by_offset(0, 160).release().perform()  # fmt: skip
        browser.find_element(By.ID, "classify").click()
        wait.until(lambda b: b.find_element(By.ID, "status").text == "The answer for your drawing:")
        assert browser.find_element(By.ID, "top1").text in run.classes

        assert browser.execute_script("return window.ninErrors") == []
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        _, stderr = server.communicate(timeout=10)
    assert "Traceback" not in stderr, stderr


def raw_request(port: int, method: str, path: str, body=None, headers=None) -> tuple[int, str]:
    """Status and body text, for answers that are not JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


@contextlib.contextmanager
def forward_passes(run: nin.Run):
    """A list that counts the network's forward passes while the block runs."""
    calls = []
    hook = run.model[0].register_forward_hook(lambda *args: calls.append(1))  # the first layer: once per pass
    try:
        yield calls
    finally:
        hook.remove()


def test_one_forward_pass_per_request(port, run, test_images):
    with forward_passes(run) as calls:
        assert_good_request(port, test_images)
    assert len(calls) == 1


@pytest.mark.parametrize("case", ["a small image", "not an image", "a large image", "a costly network"])
def test_small_work_is_done_on_the_event_loop_and_large_work_in_a_thread(run, test_images, monkeypatch, case):
    """A thread hand-off cost more than classifying a small image (or refusing a file whose header does not
    open); a large image or a network over INLINE_MACS still goes to a thread, so that it cannot hold up the
    event loop and DECODE_TIMEOUT holds."""
    from nin.serve import app as serve

    where, inputs = [], serve.inputs

    def recorded(*args):
        try:
            asyncio.get_running_loop()
            where.append("event loop")
        except RuntimeError:  # no loop runs in this thread
            where.append("thread")
        return inputs(*args)

    monkeypatch.setattr(serve, "inputs", recorded)
    data = test_images[0][0]
    if case == "a large image":  # 257x257: one pixel row and column over INLINE_PIXELS
        data = png(torch.from_numpy(np.array(Image.open(io.BytesIO(data)).resize((257, 257)))))
    if case == "not an image":
        data = b"GIF89a, or anything else" * 1000
    if case == "a costly network":
        monkeypatch.setattr(serve, "INLINE_MACS", 1_000_000)  # the fast weights: 3.2 M per image
    with serving(run) as port:
        status, answer = post_image(port, data)
    if case == "not an image":
        assert (status, answer["error"]) == (400, "the uploaded file: not a supported image format; nin reads PNG, "
                                                  "JPEG, BMP or WebP files")  # fmt: skip
    else:
        assert status == 200, answer
        assert answer["top"][0]["class"] == test_images[1][0][0]["class"]
    assert where == ["event loop" if case in ("a small image", "not an image") else "thread"]


def test_uploads_read_in_one_turn_are_classified_in_one_forward_pass(run, test_images):
    """As if classified one at a time (to 1e-6), in one pass; a failure of that pass reaches every request."""
    from nin.serve.app import Batch, inputs

    xs = [inputs(run, data) for data in test_images[0][:3]]

    async def three(batch):
        return await asyncio.gather(*(batch(x) for x in xs))

    with forward_passes(run) as calls:
        batched = asyncio.run(three(Batch(run)))
    assert len(calls) == 1
    with torch.inference_mode():
        for x, (maps, logits) in zip(xs, batched):
            alone_maps, alone_logits = class_maps(run.model.eval(), x)
            assert maps.shape == alone_maps.shape and logits.shape == alone_logits.shape == (1, 10)
            torch.testing.assert_close(logits, alone_logits, atol=1e-5, rtol=1e-5)
    boom = types.SimpleNamespace(model=torch.nn.Sequential(Boom(), torch.nn.Identity(), torch.nn.Identity()))

    async def three_failing():
        batch = Batch(boom)
        return await asyncio.gather(*(batch(x) for x in xs), return_exceptions=True)

    assert [type(e) for e in asyncio.run(three_failing())] == [ValueError] * 3


class Boom(torch.nn.Module):
    def forward(self, x):
        raise ValueError("a bug in the forward pass")


def test_a_host_that_is_not_this_server_is_refused(port, run, test_images):
    """DNS rebinding: another site's name resolving to 127.0.0.1 reaches the server with its own Host."""
    body, kind = multipart(test_images[0][0])
    with forward_passes(run) as calls:
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
            assert raw_request(port, "POST", "/predict", body, {"Content-Type": kind, "Host": host})[0] == 400
            assert raw_request(port, "GET", "/", headers={"Host": host}) == (400, "Invalid host header")
    assert calls == []  # nothing classified
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "LOCALHOST"):
        status, answer = raw_request(port, "POST", "/predict", body, {"Content-Type": kind, "Host": host})
        assert status == 200 and json.loads(answer)["top"][0]["class"] == test_images[1][0][0]["class"]


@pytest.mark.parametrize(
    "header, value, status",
    [
        ("Origin", "http://evil.example", 403),
        ("Origin", "null", 403),  # a sandboxed frame or a file:// page
        ("Origin", "http://127.0.0.1:1", 403),  # another server of this machine
        ("Referer", "http://evil.example/page.html", 403),  # a browser that sends a Referer and no Origin
        ("Origin", "http://127.0.0.1:{port}", 200),  # the page itself
        ("Referer", "http://127.0.0.1:{port}/", 200),
    ],
)
def test_a_post_from_another_site_is_refused(port, run, test_images, header, value, status):
    body, kind = multipart(test_images[0][0])
    value = value.format(port=port)
    with forward_passes(run) as calls:
        answer = request(port, "POST", "/predict", body, {"Content-Type": kind, header: value})
    assert answer[0] == status and len(calls) == (status == 200), answer
    if status == 403:
        assert answer[1] == {"error": f"a request from another site ({value}); this server answers its own page "
                                      "and programs that send no Origin header"}  # fmt: skip


def test_hosts_allowed_for_each_address():
    from nin.serve.app import allowed_hosts

    assert allowed_hosts("127.0.0.1") == ["127.0.0.1", "[::1]", "localhost"]
    assert allowed_hosts("::1", ["Nin.Example"]) == ["127.0.0.1", "[::1]", "localhost", "nin.example"]
    assert allowed_hosts("192.168.1.7") == ["127.0.0.1", "192.168.1.7", "[::1]", "localhost"]
    assert socket.gethostname().lower() in allowed_hosts("0.0.0.0")  # every address: this machine's names too


def test_info_shows_no_file_path():
    from starlette.testclient import TestClient

    from nin.serve.app import app

    folder = Path("/home/someone/private/runs/shirts")
    run = nin.Run(folder, folder / "checkpoint.pt", nin.Config(resize=67), nin.NiN().eval(), [], None, Spec())
    with TestClient(app(run), base_url="http://localhost") as client:
        response = client.get("/info")
    assert response.status_code == 200 and response.json()["model"] == "shirts" and "private" not in response.text


def slow_upload(port: int, length: int = 1000) -> socket.socket:
    """A client that announces `length` bytes of body, sends 10 and waits."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                 b"Content-Length: %d\r\n\r\n--x\r\nConte" % length)  # fmt: skip
    return sock


BUSY = (503, {"error": "the server is busy with other uploads; try again shortly"})


@pytest.mark.parametrize("slots", ["WORKERS", "SMALL_WORKERS"])
def test_uploads_are_read_one_turn_at_a_time_within_a_time_limit(run, test_images, monkeypatch, slots):
    """A slow upload holds one of the slots while its body is read (so at most WORKERS large bodies and
    SMALL_WORKERS small ones are in memory), the next upload waits QUEUE_WAIT for its turn and gets 503, the
    slow one gets 408 at READ_TIMEOUT, and then the server answers again."""
    from nin.serve import app as serve

    monkeypatch.setattr(serve, slots, 1)
    if slots == "WORKERS":
        monkeypatch.setattr(serve, "SMALL_UPLOAD", 0)  # every upload is a large one
    monkeypatch.setattr(serve, "QUEUE_WAIT", 0.2)
    monkeypatch.setattr(serve, "READ_TIMEOUT", 0.8)
    with serving(run) as port:
        slow = slow_upload(port)
        time.sleep(0.1)  # its turn taken
        assert post_image(port, test_images[0][0]) == BUSY
        response = http.client.HTTPResponse(slow)  # its answer, at READ_TIMEOUT
        response.begin()
        assert (response.status, json.loads(response.read())) == (408, {"error": "the upload took over 0.8 s; "
                                                                          "send a smaller image"})  # fmt: skip
        slow.close()
        assert_good_request(port, test_images)


def test_small_uploads_do_not_wait_for_large_ones(run, test_images, monkeypatch):
    """A large upload read slowly holds the only one of the WORKERS; a small image is answered beside it, and a
    small file of a large image waits for a WORKERS slot to be decoded (503 after QUEUE_WAIT)."""
    from nin.serve import app as serve

    monkeypatch.setattr(serve, "WORKERS", 1)
    monkeypatch.setattr(serve, "QUEUE_WAIT", 0.2)
    large_image = png(torch.from_numpy(np.array(Image.open(io.BytesIO(test_images[0][0])).resize((300, 300)))))
    assert len(large_image) < serve.SMALL_UPLOAD
    with serving(run) as port:
        slow = slow_upload(port, serve.SMALL_UPLOAD + 1)
        time.sleep(0.1)
        assert_good_request(port, test_images)
        assert post_image(port, large_image) == BUSY
        slow.close()


def test_connections_beyond_the_limit_get_503(run, test_images, monkeypatch):
    from nin.serve import app as serve

    monkeypatch.setattr(serve, "CONNECTIONS", 3)  # counting the one that asks
    with serving(run) as port:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)]
        time.sleep(0.1)
        assert raw_request(port, "GET", "/info") == (503, "Service Unavailable")  # uvicorn's own answer
        for sock in idle:
            sock.close()
        time.sleep(0.1)
        assert_good_request(port, test_images)


def half_open(port: int, sent: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(sent)
    return sock


@pytest.mark.slow  # seconds on an AVX2-only CPU: the full suite, not the quick tier
def test_100_half_open_connections_do_not_lock_others_out(run, test_images, monkeypatch):
    """Connections that never finish their headers (or send nothing) do not hold the server: others are
    answered at once, and the server closes them HEADER_TIMEOUT after they opened (64 of them made every
    request 503, and uvicorn kept them for ever)."""
    from nin.serve import app as serve

    monkeypatch.setattr(serve, "HEADER_TIMEOUT", 1.5)
    with serving(run) as port:
        began = time.monotonic()
        held = [half_open(port, b"GET /info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " if i % 2 else b"")
                for i in range(100)]  # fmt: skip
        time.sleep(0.2)  # all accepted
        assert request(port, "GET", "/info")[0] == 200
        assert_good_request(port, test_images)
        assert time.monotonic() - began < 1.5  # while all 100 are held
        for sock in held:  # each closed by the server (recv: b"" at its end), not by us
            sock.settimeout(max(0.1, began + 10 - time.monotonic()))
            assert sock.recv(100) == b""
            sock.close()
        assert time.monotonic() - began < 10


@pytest.mark.slow  # seconds on an AVX2-only CPU: the full suite, not the quick tier
def test_a_connection_that_trickles_its_headers_is_closed(run, monkeypatch):
    """A byte every 0.2 s keeps uvicorn's keep-alive timer from running out; the header deadline holds."""
    from nin.serve import app as serve

    monkeypatch.setattr(serve, "HEADER_TIMEOUT", 1.0)
    with serving(run) as port:
        assert request(port, "GET", "/info")[0] == 200
        sock = half_open(port, b"GET /info HTTP/1.1\r\n")
        began = time.monotonic()
        with pytest.raises(OSError):  # the server's close: a reset or a broken pipe
            while time.monotonic() - began < 5:
                sock.sendall(b"X")
                time.sleep(0.2)
        assert 0.9 < time.monotonic() - began < 3
        sock.close()


def test_an_answer_over_the_decode_time_gets_503_and_keeps_its_slot(run, test_images, monkeypatch):
    """Past DECODE_TIMEOUT the client gets 503 at once; its slot stays taken until the thread ends (memory
    stays bounded), then the server answers again."""
    from nin.serve import app as serve

    answer, release = serve.answer, threading.Event()
    monkeypatch.setattr(serve, "WORKERS", 1)
    monkeypatch.setattr(serve, "QUEUE_WAIT", 0.2)
    monkeypatch.setattr(serve, "DECODE_TIMEOUT", 0.5)
    monkeypatch.setattr(serve, "INLINE_PIXELS", 0)  # every upload to a thread, where the time limit holds
    monkeypatch.setattr(serve, "answer", lambda *args: release.wait(10) and answer(*args))
    with serving(run) as port:
        began = time.monotonic()
        assert post_image(port, test_images[0][0]) == (503, {"error": "the image took over 0.5 s to decode and "
                                                                      "classify; send a smaller image"})  # fmt: skip
        assert time.monotonic() - began < 3
        assert post_image(port, test_images[0][0])[0] == 503  # the slot: still its thread's
        release.set()
        time.sleep(0.1)
        assert_good_request(port, test_images)


def test_answers_go_out_at_once(run):
    """The server's connections have TCP_NODELAY: without it, each answer on a kept-alive connection waited
    for the client's delayed ACK (40 ms on Linux), and the server answered 93 requests/s at most."""
    with served(run) as (port, uvicorn_server):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/info")
        conn.getresponse().read()
        (connection,) = uvicorn_server.server_state.connections
        accepted = connection.transport.get_extra_info("socket")
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        conn.close()


def test_the_server_runs_each_forward_pass_on_one_thread(run, monkeypatch):
    """Concurrency comes from the upload slots; a pass split over threads waits for each to be scheduled."""
    import torch

    from nin.serve import app as serve

    seen = []
    monkeypatch.setattr(serve, "server", lambda *args: types.SimpleNamespace(run=lambda sockets: seen.append(
        torch.get_num_threads())))  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        serve.serve_forever(run, None)
    finally:
        torch.set_num_threads(threads)
    assert seen == [1]
