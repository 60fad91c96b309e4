"""The act-as call to the chat edge function, and what its answer means for the execution.

POST {CHAT_URL} with the service credential (`apikey: sb_secret_...`, or the
legacy service-role JWT as a bearer token), `X-Service: task-executor` and
`{"context": {user_id, agent_id, conversation_id, execution_id,
user_message_id}}`. The function acts as that user (RLS applies) and
answers with the assistant's reply, idempotently per execution_id: asking
again after a lost answer returns the stored reply (`replayed: true`), so
retrying never duplicates a message.

The result is one of four small types; the runner maps them onto the queue's
transitions (finish, requeue_later).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from worker.retry import GATEWAY_STATUSES, ErrorKind, is_retryable_status, parse_retry_after

ERROR_TEXT_MAX_CHARS = 500
KEEPALIVE_S = 30.0


@dataclass(frozen=True, slots=True)
class ActAs:
    """Who the call acts as and which scheduled message it answers."""

    user_id: uuid.UUID
    agent_id: uuid.UUID
    conversation_id: uuid.UUID
    execution_id: uuid.UUID
    user_message_id: uuid.UUID

    def body(self) -> bytes:
        return json.dumps({"context": {
            "user_id": str(self.user_id), "agent_id": str(self.agent_id),
            "conversation_id": str(self.conversation_id), "execution_id": str(self.execution_id),
            "user_message_id": str(self.user_message_id),
        }}).encode()


@dataclass(frozen=True, slots=True)
class ChatOk:
    """The agent replied."""

    message_id: uuid.UUID | None
    content: str
    usage: dict[str, Any] | None = None
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class ChatNeedsInput:
    """The agent asked the user a question; the task waits for the answer."""

    question: str
    message_id: uuid.UUID | None = None
    usage: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ChatTransient:
    """A failure a later attempt may not see: connection trouble, 429, 5xx, an empty reply."""

    error: str
    kind: ErrorKind = ErrorKind.TRANSIENT
    retry_after_s: float | None = None
    status: int | None = None
    timed_out: bool = False
    # the chat function or the network to it did not answer (connection refused
    # or reset, a gateway's 502/503/504, a connect timeout): an infrastructure
    # outage, not a failure of the model or the run (worker.breaker)
    unreachable: bool = False


@dataclass(frozen=True, slots=True)
class ChatPermanent:
    """A failure every attempt would see: refused, not found, invalid."""

    error: str
    status: int | None = None
    code: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


ChatResult = ChatOk | ChatNeedsInput | ChatTransient | ChatPermanent


def _uuid_or_none(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def _clip(text: str) -> str:
    return text if len(text) <= ERROR_TEXT_MAX_CHARS else text[:ERROR_TEXT_MAX_CHARS] + "..."


def classify_response(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> ChatResult:
    """Turn one HTTP answer of the chat function into a ChatResult (pure, unit-tested).

    `headers` is a case-insensitive mapping (aiohttp's CIMultiDictProxy)."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None

    if 200 <= status < 300:
        if not isinstance(data, dict):
            return ChatTransient(error=f"chat function answered {status} with a body that is not JSON",
                                 status=status)
        message = data.get("message") if isinstance(data.get("message"), dict) else {}
        assert isinstance(message, dict)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else None
        needs_input = data.get("needs_input")
        message_id = _uuid_or_none(message.get("id"))
        if isinstance(needs_input, dict) and needs_input.get("question"):
            return ChatNeedsInput(question=str(needs_input["question"]), message_id=message_id, usage=usage)
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            return ChatTransient(error="the model returned an empty reply", kind=ErrorKind.EMPTY_REPLY,
                                 status=status)
        return ChatOk(message_id=message_id, content=content, usage=usage,
                      replayed=bool(data.get("replayed")))

    err = data.get("error") if isinstance(data, dict) else None
    code: str | None = None
    retryable: bool | None = None
    if isinstance(err, dict):
        code = str(err["code"]) if err.get("code") is not None else None
        msg = str(err.get("message") or code or "")
        if isinstance(err.get("retryable"), bool):
            retryable = err["retryable"]
    elif isinstance(err, str):
        msg = err
    else:
        msg = body[:200].decode(errors="replace").strip()
    text = _clip(f"chat function {status}{f' {code}' if code else ''}: {msg}".rstrip(": "))
    retry_after = parse_retry_after(headers.get("retry-after")) if headers is not None else None
    if status in GATEWAY_STATUSES and code is None:
        # no error body of the function's own: a gateway answered for a function it could not reach
        return ChatTransient(error=text, kind=ErrorKind.UNREACHABLE, retry_after_s=retry_after, status=status,
                             unreachable=True)
    if is_retryable_status(status, retryable):
        kind = ErrorKind.EMPTY_REPLY if code == "empty_reply" else ErrorKind.TRANSIENT
        return ChatTransient(error=text, kind=kind, retry_after_s=retry_after, status=status)
    return ChatPermanent(error=text, status=status, code=code)


class ChatClient:
    """One shared HTTP client for every execution of a worker (keep-alive, pooled connections).

    aiohttp rather than httpx: its C HTTP parser and O(1) connection pool cost
    a fraction of httpx/httpcore's per-request CPU (bench/README.md), and the
    worker makes one request per execution.
    """

    def __init__(self, url: str, headers: dict[str, str], max_connections: int,
                 connect_timeout_s: float = 5.0) -> None:
        self.url = url
        self.headers = dict(headers)
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # created lazily: an aiohttp session belongs to the running event loop
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0,
                                             keepalive_timeout=KEEPALIVE_S)
            self._session = aiohttp.ClientSession(
                headers=self.headers, connector=connector,
                timeout=aiohttp.ClientTimeout(total=60.0, sock_connect=self.connect_timeout_s),
                trust_env=False,
            )
        return self._session

    async def reply(self, act_as: ActAs, timeout_s: float) -> ChatResult:
        """Ask the chat function for the reply to the scheduled message.

        `timeout_s` is what is left of the execution's timeout; the runner also
        enforces the deadline itself. Transport failures come back as
        ChatTransient (timed_out=True for a timeout of this HTTP attempt).
        """
        timeout = aiohttp.ClientTimeout(total=timeout_s,
                                        sock_connect=min(self.connect_timeout_s, timeout_s))
        try:
            # no redirects: the service credential must never be sent elsewhere
            async with self._client().post(self.url, data=act_as.body(), timeout=timeout,
                                           allow_redirects=False) as response:
                body = await response.read()
                return classify_response(response.status, body, response.headers)
        except aiohttp.ConnectionTimeoutError as exc:  # no connection within connect_timeout_s
            return ChatTransient(error=_clip(f"chat function unreachable: connect timed out ({exc})"),
                                 kind=ErrorKind.UNREACHABLE, unreachable=True)
        except TimeoutError as exc:  # incl. aiohttp.ServerTimeoutError and its total timeout
            return ChatTransient(error=_clip(f"chat function timed out ({type(exc).__name__})"),
                                 timed_out=True)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            # refused, reset, or closed before the whole answer came: the function (or the way
            # to it) is down (ClientConnectorError, ServerDisconnectedError, ClientOSError...).
            # Safe to give the attempt back: a turn the function had begun is stored under
            # the execution_id and the next attempt takes it up without a second model call.
            return ChatTransient(error=_clip(f"chat function unreachable: {type(exc).__name__}: {exc}"),
                                 kind=ErrorKind.UNREACHABLE, unreachable=True)
        except (aiohttp.ClientError, OSError) as exc:
            return ChatTransient(error=_clip(f"chat function unreachable: {type(exc).__name__}: {exc}"))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
