"""Host check against DNS rebinding: a web page the user happens to visit can make the browser send requests to
a server on loopback under a name the attacker controls (`evil.example` resolving to 127.0.0.1). Such requests
carry that name in `Host`, so a server bound to loopback answers only the names loopback has; others get a 400.
"""

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import error_body

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_ANY_ADDRESS = ("0.0.0.0", "::", "")


def default_allowed_hosts(bound_host: str) -> list[str]:
    """Loopback names and the bound address when bound to loopback (or another single address); any host when
    bound to every address, where the operator exposes the server on purpose."""
    if bound_host in _ANY_ADDRESS:
        return ["*"]
    bound = f"[{bound_host}]" if ":" in bound_host and not bound_host.startswith("[") else bound_host
    return list(dict.fromkeys([*LOOPBACK_NAMES, bound]))


def host_name(header: str) -> str:
    """The `Host` header without its port (`[::1]:8000` -> `[::1]`)."""
    if header.startswith("["):
        return header[: header.find("]") + 1]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allowed(name: str, allowed: list[str]) -> bool:
    """Exact names (case-insensitive), `*` for any, `*.example.com` for its subdomains."""
    name = name.lower()
    for pattern in allowed:
        pattern = pattern.lower()
        if pattern == "*" or name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


class HostCheck:
    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.allowed = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or "*" in self.allowed:
            await self.app(scope, receive, send)
            return
        name = host_name(Headers(scope=scope).get("host", ""))
        if host_allowed(name, self.allowed):
            await self.app(scope, receive, send)
            return
        message = f"Host '{name}' is not allowed on this server; start it with --allowed-hosts to allow it."
        body = error_body(message, type="invalid_request_error", code="host_not_allowed")
        await JSONResponse(body, status_code=400)(scope, receive, send)
