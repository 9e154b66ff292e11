"""A real Label Studio server for the tests: started from its own virtual environment, on 127.0.0.1.

Label Studio's Django stack must never touch tlkit's environment, so it lives in a venv of its own
(``.ci/run`` makes one) and the tests find its ``label-studio`` executable through the environment
variable ``TLKIT_LABEL_STUDIO``. Telemetry, the version check and Sentry are off; the server binds
127.0.0.1 only, uses a temporary data folder, serves local files from a temporary document root,
and is stopped by PID (its whole process group) at the end of the session.

To run these tests locally::

    python -m venv /tmp/lsvenv && /tmp/lsvenv/bin/pip install "label-studio==1.23.*"
    TLKIT_LABEL_STUDIO=/tmp/lsvenv/bin/label-studio python -m pytest tests/test_labelstudio.py
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOKEN = "tlkit0test0token0a1b2c3d4e5f6"
USER, PASSWORD = "tlkit@example.com", "tlkit-test-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabelStudio:
    """A running server and a minimal client of its REST API (token auth)."""

    url: str
    proc: subprocess.Popen
    document_root: Path
    log: Path

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                params: dict | None = None, token: str = TOKEN) -> tuple[int, bytes]:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Authorization": f"Token {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def api(self, method: str, path: str, body: Any = None, **kw) -> Any:
        status, content = self.request(method, path, body, **kw)
        if status >= 300:
            raise AssertionError(f"{method} {path} -> {status}: {content[:500]!r}")
        return json.loads(content) if content else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start(executable: str, workdir: Path, timeout: float = 240) -> LabelStudio:
    """Start Label Studio with data under ``workdir`` and ``workdir/root`` as its document root."""
    data, root = workdir / "data", workdir / "root"
    data.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir), "LANG": "C.UTF-8",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data), "DJANGO_DB": "sqlite",
        "LABEL_STUDIO_USERNAME": USER, "LABEL_STUDIO_PASSWORD": PASSWORD, "LABEL_STUDIO_USER_TOKEN": TOKEN,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
        "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "", "COLLECT_ANALYTICS": "false", "LATEST_VERSION_CHECK": "false",
        # an ML backend (tlkit serve) on this machine: Label Studio blocks loopback addresses by default
        "ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false",
    }
    log = workdir / "label-studio.log"
    cmd = [executable, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
           "--data-dir", str(data), "--username", USER, "--password", PASSWORD, "--user-token", TOKEN,
           "--enable-legacy-api-token"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=workdir)
    server = LabelStudio(f"http://127.0.0.1:{port}", proc, root, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Label Studio exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if server.request("GET", "/api/current-user/whoami")[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(1)
    server.stop()
    raise RuntimeError(f"Label Studio did not answer within {timeout:.0f} s: {log.read_text()[-2000:]}")
