"""Fuzz `POST /predict` in-process (Starlette's TestClient): multipart bodies with real, mutated and random
files, wrong fields, names and boundaries, truncated bodies, random bytes, and random Origin headers get a
200 with the top-3 or a 4xx with one JSON error sentence, never a 500."""

import pytest
from fuzzing import SEEDS, examples, mutated, outcome
from hypothesis import given
from hypothesis import strategies as st

import nin
from helpers import require

require("starlette")


@pytest.fixture(scope="module")
def client():
    from starlette.testclient import TestClient

    from nin.serve.app import app

    with TestClient(app(nin.load_weights("fast")), base_url="http://127.0.0.1:8000") as client:
        yield client


token = st.text(st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters='"\\'), max_size=12)


@st.composite
def bodies(draw) -> tuple[bytes, dict, str]:
    """A request body and its headers: mostly multipart, sometimes anything."""
    boundary = draw(st.sampled_from(["nin-fuzz"] * 8 + [draw(token) or "-"]))
    data = draw(st.one_of(st.sampled_from(list(SEEDS.values())), mutated(), st.binary(max_size=300)))
    field, filename = draw(st.sampled_from(["image"] * 8 + ["file", "Image"])), draw(token)
    part = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {draw(st.sampled_from(['image/png', 'text/plain', '']))}\r\n\r\n").encode()  # fmt: skip
    body = part + data + f"\r\n--{boundary}--\r\n".encode()
    cut = body[: draw(st.integers(0, len(body)))]
    body = draw(st.sampled_from([body] * 8 + [cut, draw(st.binary(max_size=300))]))
    kind = draw(st.sampled_from([f"multipart/form-data; boundary={boundary}"] * 8 + ["multipart/form-data",
                                 "application/octet-stream", "image/png", ""]))  # fmt: skip
    headers = {"Content-Type": kind} if kind else {}
    origin = draw(st.sampled_from([None] * 6 + ["http://127.0.0.1:8000", "http://evil.example", "null", "x"]))
    if origin is not None:
        headers["Origin"] = origin
    return body, headers, draw(st.sampled_from(["/predict", "/predict?cam=1"]))  # the page asks for the map


@examples(80)
@given(bodies())
def test_predict_answers_200_or_one_json_error(client, request_):
    body, headers, path = request_
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == 200 or 400 <= response.status_code < 500, (response.status_code, response.text)
    answer = response.json()
    outcome(answer.get("error", "the top-3"), prefix=f"{response.status_code}: ")
    if response.status_code == 200:
        assert len(answer["top"]) == 3 and ("cam" in answer) == path.endswith("cam=1")
    else:
        assert list(answer) == ["error"] and isinstance(answer["error"], str) and answer["error"], answer
