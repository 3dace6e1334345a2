"""The API's refusals: one exception carrying the HTTP status and one line, rendered in OpenAI's error shape.

OpenAI clients read `{"error": {"message", "type", "param", "code"}}` and raise typed errors from the status
(400 BadRequestError, 401 AuthenticationError, 413/429 ...), so a refusal reads the same in curl and in Python.

    raise ApiError(413, "image part 0 is 31.2 MB, over the 20.0 MB upload limit (--max-upload-mb)", param="messages")
"""

from __future__ import annotations

from typing import Any

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error"}


class ApiError(Exception):
    """A request the server refuses (or cannot answer), with the status and a one-line reason naming the fix.

    Args:
        status: HTTP status (4xx for the client's request, 503 while loading, 500 for a server fault).
        message: one line; newlines are folded.
        param: the request field at fault, if any.
    """

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = " ".join(str(message).split())
        self.param = param

    def body(self) -> dict[str, Any]:
        """The JSON body, in OpenAI's error shape."""
        kind = _TYPES.get(self.status, "rate_limit_error" if self.status == 429 else "server_error")
        if self.status == 413:
            kind = "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}}
