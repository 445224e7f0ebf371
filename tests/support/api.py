"""A small client for /api/v1 with a bearer token."""

from __future__ import annotations

from typing import Any

import requests

from tests.support.lockstep_server import LockstepServer


class Api:
    def __init__(self, server: LockstepServer, name: str, secret: str) -> None:
        self.base = server.url + "/api/v1"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {name}.{secret}"

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.session.get(self.base + path, params=params)

    def post(self, path: str, body: Any, **headers: str) -> requests.Response:
        return self.session.post(self.base + path, json=body, headers=headers)

    def patch(self, path: str, body: Any) -> requests.Response:
        return self.session.patch(self.base + path, json=body)

    def delete(self, path: str) -> requests.Response:
        return self.session.delete(self.base + path)


def api_for(server: LockstepServer, scope: str = "bookings") -> Api:
    return Api(server, *server.create_token(scope=scope))
