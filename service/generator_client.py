"""The gateway's client of the generation server: httpx with timeouts and connection retries.

Connection failures become `EngineUnavailable` (503 + Retry-After); a keep-alive connection the
generation server closed (it does after a 500) is retried once on a new connection (its calls have no
side effects but cache writes); error envelopes from the generator are passed through with their
status code. Every call carries the gateway's request id
(`X-Request-ID`). Closing a stream early (the gateway's client went away) closes its connection, which
the generation server sees as its client leaving: it stops the decode.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx

from service import request_id
from service.errors import EngineUnavailable, ServiceError


async def _send_request_id(request: httpx.Request) -> None:
    rid = request_id.current.get()
    if rid is not None:
        request.headers[request_id.HEADER] = rid


class UpstreamError(ServiceError):
    """An error envelope returned by the generation server, re-raised with its own name."""

    def __init__(self, status_code: int, body: dict[str, Any], headers: dict[str, str]):
        super().__init__(str(body.get("detail", body)), status_code, headers=headers)
        self.name = str(body.get("error", "UpstreamError"))
        self.body = body


class GeneratorClient:
    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        retries: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        transport = transport or httpx.AsyncHTTPTransport(retries=retries)
        timeout = httpx.Timeout(timeout_s, connect=2.0)
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            transport=transport,
            event_hooks={"request": [_send_request_id]},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            body = response.json()
        except ValueError:
            body = {"error": "UpstreamError", "detail": response.text[:500]}
        headers = {k: v for k, v in response.headers.items() if k.lower() == "retry-after"}
        raise UpstreamError(response.status_code, body, headers)

    async def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        try:
            return await self._client.send(request, stream=stream)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            # a pooled connection closed or reset under us: once more, on a new connection
            return await self._client.send(request, stream=stream)

    async def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._send(self._client.build_request("POST", path, json=payload))
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise EngineUnavailable(f"generation server unreachable: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise EngineUnavailable(f"generation server timed out: {exc}") from exc
        except httpx.TransportError as exc:  # the connection broke twice
            raise EngineUnavailable(f"generation server unreachable: {type(exc).__name__}") from exc
        self._raise_for(response)
        return response.json()  # type: ignore[no-any-return]

    async def get(self, path: str) -> dict[str, Any]:
        try:
            response = await self._client.get(path, timeout=5.0)
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"generation server unreachable: {exc}") from exc
        self._raise_for(response)
        return response.json()  # type: ignore[no-any-return]

    async def stream(self, path: str, payload: dict[str, Any]) -> AsyncIterator[bytes]:
        """Open an SSE stream; errors before the first byte raise, later ones end the stream. Closing
        the returned iterator (or cancelling its reader) closes the upstream response."""
        request = self._client.build_request("POST", path, json=payload)
        try:
            response = await self._send(request, stream=True)
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"generation server unreachable: {exc}") from exc
        if response.status_code >= 400:
            await response.aread()
            await response.aclose()
            self._raise_for(response)

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:
                with anyio.CancelScope(shield=True):  # also when the reader was cancelled mid-read
                    await response.aclose()

        return body()
