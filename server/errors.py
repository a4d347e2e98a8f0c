"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the right status."""

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

# Not an HTTP standard code but the one proxies log for "client closed request"; nobody receives it.
CLIENT_CLOSED_REQUEST = 499


class ClientDisconnected(Exception):
    """The client closed the connection before its answer was ready."""


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.headers = headers
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    """One plain sentence for the first problem pydantic found, and the field it concerns."""
    first = error.errors()[0]
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    param = _param_name([part for part in first.get("loc", ()) if part != "body"])
    if param is None:
        return "The request body must be a JSON object.", None
    return f"Invalid value for '{param}': {first.get('msg')}.", param


def _param_name(location: list[str | int]) -> str | None:
    """`messages[2]` style: the top-level field and the list indices right after it. Deeper string parts are
    pydantic's names for union members (`str`, `list[str]`), not fields a client wrote."""
    if not location:
        return None
    name = str(location[0])
    for part in location[1:]:
        if not isinstance(part, int):
            break
        name += f"[{part}]"
    return name


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(ClientDisconnected)
    async def _gone(_: Request, __: ClientDisconnected) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        message, param = validation_message(error)
        return JSONResponse(error_body(message, type="invalid_request_error", param=param), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, error: HTTPException) -> JSONResponse:
        phrase = HTTPStatus(error.status_code).phrase
        message = error.detail if isinstance(error.detail, str) and error.detail != phrase else phrase
        kind = "invalid_request_error" if error.status_code < 500 else "server_error"
        return JSONResponse(error_body(message, type=kind), status_code=error.status_code, headers=error.headers)
