"""A minimal Label Studio REST client for ``tlkit serve`` (standard library only).

The URL and API key come from the environment (``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY``),
never from the command line, and the key is never logged.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable

from tlkit.core.errors import TlkitError

log = logging.getLogger(__name__)


class LabelStudioClient:
    """Calls Label Studio's API with a token.

    Args:
        url: Label Studio's base URL (``http://127.0.0.1:8080``).
        key: an API token (legacy token, ``Authorization: Token ...``).
        project: the Label Studio project id (learned from ``/setup`` or a webhook when None).
    """

    def __init__(self, url: str, key: str, project: int | None = None, timeout: float = 30.0):
        self.url, self._key, self.project, self.timeout = url.rstrip("/"), key, project, timeout

    @classmethod
    def from_env(cls) -> "LabelStudioClient | None":
        url, key = os.environ.get("LABEL_STUDIO_URL"), os.environ.get("LABEL_STUDIO_API_KEY")
        return cls(url, key) if url and key else None

    def __repr__(self) -> str:  # never show the key
        return f"LabelStudioClient({self.url!r}, project={self.project})"

    def _call(self, method: str, path: str, body: Any = None, params: dict | None = None) -> Any:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Token {self._key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                content = r.read()
        except urllib.error.HTTPError as e:
            raise TlkitError(f"Label Studio answered {e.code} to {method} {path}") from None
        except OSError as e:
            raise TlkitError(f"cannot reach Label Studio at {self.url}: {e}") from None
        return json.loads(content) if content else None

    def task(self, task_id: int) -> dict[str, Any]:
        """A task with every annotation."""
        return self._call("GET", f"/api/tasks/{int(task_id)}")

    def retrieve_predictions(self) -> None:
        """Have Label Studio ask the backend for predictions of every task lacking the current version."""
        self._call("POST", "/api/dm/actions", {"selectedItems": {"all": True, "excluded": []}},
                   params={"id": "retrieve_tasks_predictions", "project": self.project})

    def show_version(self, version: str) -> bool:
        """Show ``version``'s predictions in the project (its Data Manager scores and queue use them).

        Label Studio accepts only a version it holds predictions of: returns False until then.
        """
        if self.project is None:
            return False
        if self._call("GET", f"/api/projects/{self.project}").get("model_version") == version:
            return True
        try:
            self._call("PATCH", f"/api/projects/{self.project}", {"model_version": version})
        except TlkitError:
            return False
        return True

    def tasks(self, page_size: int = 500):
        """Every task of the project (data only), page by page."""
        page, seen = 1, 0
        while True:
            res = self._call("GET", "/api/tasks", params={"project": self.project, "page": page,
                                                          "page_size": page_size, "fields": "task_only"})
            batch = res.get("tasks", []) if isinstance(res, dict) else res
            yield from batch
            seen += len(batch)
            total = res.get("total", seen) if isinstance(res, dict) else seen
            if not batch or seen >= total:
                return
            page += 1

    def update_ranks(self, rank_of: Callable[[dict[str, Any]], int | None]) -> int:
        """Write tlkit's rank into each task's ``data.tlkit_rank`` where it changed; returns how many changed.

        ``rank_of(data)`` gives a task's new rank (None: leave the task as it is, e.g. labeled).
        """
        changed = 0
        for task in list(self.tasks()):
            data = task.get("data") or {}
            rank = rank_of(data)
            if rank is not None and data.get("tlkit_rank") != rank:
                self._call("PATCH", f"/api/tasks/{int(task['id'])}", {"data": {**data, "tlkit_rank": rank}})
                changed += 1
        return changed
