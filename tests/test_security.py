"""`tlkit serve` driven by a hostile client (issue #27).

One real server (``--add-new``, basic auth with a non-ASCII password, a small body limit) over a
real project. Every field that names a file (``tlkit_path``, the image URL, webhook task data) is
tried with traversal, absolute paths, symlinks out of the pool, odd Unicode and non-strings; bodies
are oversized (with and without a Content-Length) and nested deeply; auth headers are wrong,
malformed and not ASCII. Every answer must be a 4xx; a sentinel image outside the pool is never
opened (its access time, on a strictatime tmpfs, never moves) and never predicted; ``pool.csv`` and
``labels.csv`` stay byte-identical; the server stays up without a traceback.
"""

from __future__ import annotations

import base64
import http.client as httpclient
import json
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.test_serve import Server, _annotation_event, _make_project, http

pytestmark = pytest.mark.slow

PASSWORD = "pässwörd ✓"
MAX_BODY = 200_000


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")


GOOD = {"Authorization": _basic("admin", PASSWORD)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(server, project dir, sentinel path, whether the sentinel's atime is trustworthy)."""
    tmp = tmp_path_factory.mktemp("hostile")
    project_dir, truth = _make_project(tmp / "root", tmp)
    outside = tmp / "outside"
    outside.mkdir()
    strict = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,strictatime", "tmpfs", str(outside)],
                            capture_output=True).returncode == 0
    pool = tmp / "root" / "serve pool"
    sentinel = outside / "sentinel.png"
    shutil.copy(pool / sorted(truth)[0], sentinel)  # a real image: decodable, so a leak would be predicted
    os.symlink(sentinel, pool / "link-out.png")
    os.symlink(outside, pool / "dir-out")
    server = Server(project_dir, "--add-new", "--retrain-every", "0",
                    env={"TLKIT_SERVE_AUTH": f"admin:{PASSWORD}", "TLKIT_SERVE_MAX_BODY": str(MAX_BODY)})
    os.utime(sentinel, (1_000_000_000, 1_000_000_000))
    try:
        yield server, project_dir, sentinel, strict
    finally:
        server.stop()
        if strict:
            subprocess.run(["umount", "-l", str(outside)], check=False)


def _state(project_dir: Path) -> dict[str, bytes]:
    return {f: (project_dir / f).read_bytes() for f in ("pool.csv", "labels.csv", "project.yaml")}


def _hostile_paths(sentinel: Path) -> list[object]:
    return [
        "../../outside/sentinel.png", "../outside/sentinel.png", "sub/../../outside/sentinel.png",
        str(sentinel), "/etc/passwd", "/etc/hostname", "link-out.png", "dir-out/sentinel.png",
        "..%2F..%2Foutside%2Fsentinel.png", "\uff0e\uff0e/\uff0e\uff0e/outside/sentinel.png",
        "..\u2215..\u2215outside\u2215sentinel.png", "link-out.png\x00.png", "./../outside/sentinel.png",
        "nope.png", 5, 3.5, True, ["link-out.png"], {"path": str(sentinel)},
    ]


def _hostile_urls(sentinel: Path) -> list[str]:
    prefix = "/data/local-files/?d="
    return [
        prefix + quote("serve pool/../../outside/sentinel.png"), prefix + quote(str(sentinel)),
        prefix + "serve%20pool%2F..%2F..%2Foutside%2Fsentinel.png", prefix + "serve%20pool/link-out.png",
        prefix + "serve%20pool/dir-out/sentinel.png", prefix + "../outside/sentinel.png",
        "file://" + str(sentinel), "http://127.0.0.1:1/sentinel.png", prefix + "serve%20pool/%00",
        prefix + "serve%20pool/nope.png",
    ]


def _assert_untouched(world, before: dict[str, bytes]) -> None:
    server, project_dir, sentinel, strict = world
    assert _state(project_dir) == before
    if strict:
        assert os.stat(sentinel).st_atime == 1_000_000_000, "a file outside the pool was opened"
    status, health = http("GET", server.url + "/health", headers=GOOD)
    assert status == 200 and health["status"] == "UP"
    assert "Traceback" not in server.log.read_text()


def test_predict_never_opens_a_file_outside_the_pool(world):
    server, project_dir, sentinel, _ = world
    before = _state(project_dir)
    answers = []
    for path in _hostile_paths(sentinel):
        status, body = http("POST", server.url + "/predict", {"tasks": [{"id": 1, "data": {
            "image": "/data/local-files/?d=x", "tlkit_path": path}}]}, headers=GOOD)
        answers.append((path, status, body))
    for url in _hostile_urls(sentinel):
        status, body = http("POST", server.url + "/predict", {"tasks": [{"id": 1, "data": {"image": url}}]},
                            headers=GOOD)
        answers.append((url, status, body))
    name = Path(project_dir / "pool.csv").read_text().splitlines()[1].split(",", 1)[1]
    bomb = ('<?xml version="1.0"?><!DOCTYPE v [<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9)) + ']><View>&j;</View>')
    for config in (5, ["<View/>"], "<View><Choices", bomb):  # a valid task, a hostile labeling config
        status, body = http("POST", server.url + "/predict", {"tasks": [{"data": {"tlkit_path": name}}],
                                                              "label_config": config}, headers=GOOD)
        assert status == 400 and "label_config" in body["error"], (str(config)[:40], status, body)
    for named, status, body in answers:
        assert status == 400, (named, status, body)
        assert "results" not in body and "is not a pool image" in body["error"], (named, body)
    # outside and missing give the same answer: nothing tells a client which files exist
    by_kind = {named: body["error"].split(": image ", 1)[1].split(" is not", 1)[1] for named, _, body in answers
               if isinstance(named, str)}
    assert len(set(by_kind.values())) == 1, by_kind
    _assert_untouched(world, before)


def test_webhooks_refuse_every_path_outside_the_pool(world):
    from tlkit.active.project import Project

    server, project_dir, sentinel, _ = world
    project = Project.open(project_dir)
    before = _state(project_dir)
    events = []
    for path in _hostile_paths(sentinel):
        event = _annotation_event(project, "x.png", "1", 9, 9)
        event["task"]["data"] = {"image": "/data/local-files/?d=x", "tlkit_path": path}
        events.append(event)
    for url in _hostile_urls(sentinel):
        event = _annotation_event(project, "x.png", "1", 9, 9)
        event["task"]["data"] = {"image": url}
        events.append(event)
    name = project.pool_paths()[0]
    odd = [  # malformed ids and annotation lists
        {**_annotation_event(project, name, "1", 9, 9), "annotation": {"id": "abc", "result": []}},
        {**_annotation_event(project, name, "1", 9, 9), "task": {"id": {"x": 1}, "data": {"tlkit_path": name}}},
        {"action": "ANNOTATIONS_DELETED", "annotations": 5},
        {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": "abc"}]},
        {"action": "ANNOTATIONS_DELETED", "annotations": ["x"]},
        {"action": "ANNOTATION_CREATED", "task": {"data": {"tlkit_path": name}}, "annotation": {"result": 5}},
        {"action": "ANNOTATION_CREATED", "task": {"data": {"tlkit_path": name}, "annotations": 5},
         "annotation": {"result": [{"value": {"choices": [{"nested": "choice"}]}}]}},
    ]
    for event in events + odd:
        status, body = http("POST", server.url + "/webhook", event, headers=GOOD)
        assert 400 <= status < 500 and "error" in body, (event, status, body)
    _assert_untouched(world, before)


def test_oversized_and_nested_bodies_are_4xx(world):
    server, project_dir, _, _ = world
    before = _state(project_dir)
    big = json.dumps({"tasks": [{"data": {"image": "x" * 1000}}] * (MAX_BODY // 1000 + 10)}).encode()
    for route in ("/predict", "/webhook", "/setup"):
        status, body = http("POST", server.url + route, raw=big, headers=GOOD)
        assert status == 413 and "over" in body["error"], (route, status, body)
        # the same body without a Content-Length (chunked): bounded while it is read
        conn = httpclient.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("POST", route, body=iter([big[i:i + 65536] for i in range(0, len(big), 65536)]),
                     headers={**GOOD, "Content-Type": "application/json"}, encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 413, (route, resp.status, resp.read()[:200])
        conn.close()
        deep = b"[" * 50_000 + b"]" * 50_000
        for raw in (deep, b'{"tasks": ' + deep + b"}", b"{" * 1000):
            status, body = http("POST", server.url + route, raw=raw, headers=GOOD)
            assert status == 400 and "error" in body, (route, status, body)
    for raw in (b"[1]", b'"x"', b"5", b"null"):  # JSON, but not an object
        for route in ("/predict", "/webhook", "/setup"):
            status, body = http("POST", server.url + route, raw=raw, headers=GOOD)
            assert status == 400 and "error" in body, (route, raw, status, body)
    _assert_untouched(world, before)


def test_auth_refuses_every_bad_header_and_takes_a_non_ascii_password(world):
    server, project_dir, _, _ = world
    before = _state(project_dir)
    assert http("GET", server.url + "/health", headers=GOOD)[0] == 200
    bad = [None, _basic("admin", "pässwörd"), _basic("admin", PASSWORD + " "), _basic("ädmin", PASSWORD),
           _basic("admin", ""), "Basic !!!not-base64", "Basic " + base64.b64encode(b"no colon").decode(),
           "Basic " + base64.b64encode(b"\xff\xfe:\x00").decode(), "Bearer " + GOOD["Authorization"][6:],
           "Basic", "basic" + GOOD["Authorization"][5:] + "=", "Basic " + "A" * 20_000]
    for header in bad:
        for method, route in (("GET", "/health"), ("POST", "/predict"), ("POST", "/webhook")):
            status = _status(server, method, route, {} if header is None else {"Authorization": header.encode()})
            expected = range(400, 500) if header and len(header) > 10_000 else (401,)  # h11 may refuse huge headers
            assert status in expected, (header[:40] if header else header, route, status)
    # a non-ASCII header straight from the socket (latin-1 and UTF-8 bytes): 401, never a 500
    for raw in ("Basic pässwörd".encode("latin-1"), "Basic ✓✓✓".encode("utf-8"), b"Basic \xff\xfe\xfd",
                "Basic ".encode() + base64.b64encode(f"admin:{PASSWORD}".encode("latin-1", "replace"))):
        assert _status(server, "GET", "/health", {"Authorization": raw}) == 401, raw
    _assert_untouched(world, before)


def _status(server, method: str, route: str, headers: dict[str, bytes]) -> int:
    """The status of a request whose headers go to the socket as given bytes (what urllib would refuse)."""
    conn = httpclient.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, route)
        for key, value in headers.items():
            conn.putheader(key, value)
        body = b'{"tasks": []}' if method == "POST" else b""
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_sentinel_access_would_be_seen(world):
    """The atime check can fail: reading the sentinel moves its access time (strictatime tmpfs)."""
    _, _, sentinel, strict = world
    if not strict:
        pytest.skip("no strictatime tmpfs here; the other tests fall back to the 4xx and prediction checks")
    os.utime(sentinel, (1_000_000_000, 1_000_000_000))
    from PIL import Image

    with Image.open(sentinel) as im:
        im.load()
    assert os.stat(sentinel).st_atime != 1_000_000_000
    os.utime(sentinel, (1_000_000_000, 1_000_000_000))
