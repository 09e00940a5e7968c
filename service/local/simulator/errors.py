"""Errors in OpenAI's JSON shape: ``{"error": {message, type, param, code}}``."""

from __future__ import annotations

from aiohttp import web


class ApiError(Exception):
    """An error answered as OpenAI does: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers

    def response(self) -> web.Response:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        body = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return web.json_response({"error": body}, status=self.status, headers=self.headers)


def invalid_value(param: str, value: str, allowed: tuple[str, ...]) -> ApiError:
    supported = ", ".join(f"'{item}'" for item in allowed)
    message = f"Invalid value: '{value}'. Supported values are: {supported}."
    return ApiError(400, message, param=param, code="invalid_value")
