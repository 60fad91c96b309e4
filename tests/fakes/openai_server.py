"""A FAKE OpenAI-compatible chat completions server for tests and the local stack.

Speaks the real wire format (``POST /v1/chat/completions`` plain and
streamed, with tool calls; ``GET /v1/models``) and behaves deterministically:
it echoes the last user message, and directives inside that message script
failures, delays and tool calls (see README.md beside this file). A control
API (``/_fake/*``) lets tests change global behaviour and read back every
request body the server received.

Standard library only (asyncio): a small HTTP/1.1 server with keep-alive is
all this needs, and it holds hundreds of slow requests at once cheaply.

    python tests/fakes/openai_server.py --port 8911
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

MAX_RECORDED = 10_000
MAX_BODY_BYTES = 32 * 1024 * 1024
ECHO_CHARS = 200
# how much of a tool's result the answer after it quotes
TOOL_ECHO_CHARS = 2000
FAKE_MODEL = "fake-model"

REASONS = {
    200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
    413: "Payload Too Large", 422: "Unprocessable Entity", 429: "Too Many Requests",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}

SLEEP_RE = re.compile(r"\[\[sleep:(\d+)\]\]")
FAIL_RE = re.compile(r"\[\[fail:(\d{3})\]\]")
FAIL_TIMES_RE = re.compile(r"\[\[fail_times:(\d+):(\d{3})\]\]")
ASK_RE = re.compile(r"\[\[ask:(.*?)\]\]", re.S)
TOOL_PREFIX = "[[tool:"
STATUS_PREFIX = "[[status:"


@dataclass
class Config:
    """Global behaviour set through POST /_fake/config."""

    latency_ms: int = 0
    fail_status: int | None = None
    reply: str | None = None
    # this share of completions fails with 503 (a provider's transient failures), drawn from a
    # generator seeded with fail_seed, so a run of a test is repeatable
    fail_rate: float = 0.0
    fail_seed: int = 0


@dataclass
class State:
    config: Config = field(default_factory=Config)
    requests: collections.deque[Any] = field(default_factory=lambda: collections.deque(maxlen=MAX_RECORDED))
    # [[fail_times:N:STATUS]]: failures served so far, per exact message text
    failures: dict[str, int] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)

    def reset(self) -> None:
        self.config = Config()
        self.requests.clear()
        self.failures.clear()


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


# --- HTTP plumbing -------------------------------------------------------------------


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """One request from the connection, or None when the client closed it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    except asyncio.LimitOverrunError as exc:
        raise HttpError(431, "request head too large") from exc
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError as exc:
        raise HttpError(400, "bad request line") from exc
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await read_chunked(reader)
    else:
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY_BYTES:
            raise HttpError(413, "body too large")
        body = await reader.readexactly(length) if length else b""
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return Request(method.upper(), target.split("?", 1)[0], headers, body, keep_alive)


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            # trailers end with an empty line
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return b"".join(parts)
        total += size
        if total > MAX_BODY_BYTES:
            raise HttpError(413, "body too large")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def response_head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def send(writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str = "application/json",
               keep_alive: bool = True, extra: dict[str, str] | None = None) -> None:
    headers = {"content-type": content_type, "content-length": str(len(body)),
               "connection": "keep-alive" if keep_alive else "close", **(extra or {})}
    writer.write(response_head(status, headers) + body)
    await writer.drain()


async def send_json(writer: asyncio.StreamWriter, status: int, obj: Any, keep_alive: bool = True,
                    extra: dict[str, str] | None = None) -> None:
    await send(writer, status, json.dumps(obj).encode(), keep_alive=keep_alive, extra=extra)


def openai_error(status: int, message: str) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 401: "invalid_api_key", 403: "permission_denied",
            404: "not_found", 429: "rate_limit_exceeded"}.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": kind}}


# --- the model's behaviour -------------------------------------------------------------------


def text_of(content: Any) -> str:
    """Message content as text (strings, or the list-of-parts form)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return text_of(message.get("content"))
    return ""


def parse_tool_directives(text: str) -> list[tuple[str, str]]:
    """Every [[tool:NAME:JSON_ARGS]] -> [(NAME, JSON_ARGS)], in order (several: parallel calls in one
    answer); the JSON may itself contain ']]' or ':'."""
    found: list[tuple[str, str]] = []
    start = text.find(TOOL_PREFIX)
    while start != -1:
        rest = text[start + len(TOOL_PREFIX):]
        name, sep, args = rest.partition(":")
        if not sep or not name:
            break
        try:
            _, end = json.JSONDecoder().raw_decode(args)
        except json.JSONDecodeError:
            end = args.find("]]")
            if end == -1:
                break
        found.append((name.strip(), args[:end].strip()))
        start = text.find(TOOL_PREFIX, start + len(TOOL_PREFIX))
    return found


def status_step(text: str, messages: list[dict[str, Any]]) -> tuple[bool, Any]:
    """[[status:JSON_ARRAY]] -> (True, the step for this run), else (False, None).

    The run number is how many user messages of the conversation carry the
    directive (each scheduled run adds one); past the array's end the last
    step repeats. A step is report_task_status arguments, or null for a plain
    echo (no tool call).
    """
    start = text.find(STATUS_PREFIX)
    if start == -1:
        return False, None
    try:
        steps, _ = json.JSONDecoder().raw_decode(text[start + len(STATUS_PREFIX):])
    except json.JSONDecodeError:
        return False, None
    if not isinstance(steps, list) or not steps:
        return False, None
    run = sum(1 for m in messages if m.get("role") == "user" and STATUS_PREFIX in text_of(m.get("content")))
    return True, steps[min(max(run, 1), len(steps)) - 1]


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


@dataclass
class Answer:
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


def tool_call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": arguments}}


def tool_result_text(content: str) -> str:
    """A tool result as the answer quotes it: a JSON string is quoted as its text (an MCP tool's
    result arrives as one), anything else as sent."""
    try:
        value = json.loads(content)
    except ValueError:
        return content
    return value if isinstance(value, str) else content


def decide(messages: list[dict[str, Any]], config: Config, user_text: str) -> Answer:
    """What the fake model answers (failure directives are handled before this)."""
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        # after parallel calls, every result of the last round, in order
        results: list[str] = []
        for message in reversed(messages):
            if message.get("role") != "tool":
                break
            results.insert(0, tool_result_text(text_of(message.get("content"))))
        return Answer("Done: " + "\n".join(results)[:TOOL_ECHO_CHARS])
    if "[[empty]]" in user_text:
        return Answer("")
    ask = ASK_RE.search(user_text)
    if ask:
        return Answer(None, [tool_call("request_user_input", json.dumps({"question": ask.group(1)}))])
    tools = parse_tool_directives(user_text)
    if tools:
        return Answer(None, [tool_call(name, args) for name, args in tools])
    scripted, step = status_step(user_text, messages)
    if scripted and step is not None:
        return Answer(None, [tool_call("report_task_status", json.dumps(step))])
    if config.reply is not None:
        return Answer(config.reply)
    return Answer("Echo: " + user_text[:ECHO_CHARS])


def usage_for(messages: list[dict[str, Any]], answer: Answer) -> dict[str, int]:
    prompt = sum(estimate_tokens(text_of(m.get("content"))) + 4 for m in messages)
    completion = estimate_tokens(answer.content or "") + sum(
        estimate_tokens(c["function"]["arguments"]) for c in answer.tool_calls or [])
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_object(model: str, answer: Answer, usage: dict[str, int]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer.content}
    if answer.tool_calls:
        message["tool_calls"] = answer.tool_calls
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
        "model": model, "system_fingerprint": "fake",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": answer.finish_reason}],
        "usage": usage,
    }


def split_text(text: str, pieces: int = 4) -> list[str]:
    """Cut text into a few deltas at word boundaries (every delta non-empty)."""
    words = re.findall(r"\S+\s*|\s+", text)
    if len(words) <= 1:
        return [text] if text else []
    size = max(1, -(-len(words) // pieces))
    return ["".join(words[i:i + size]) for i in range(0, len(words), size)]


def stream_chunks(model: str, answer: Answer, usage: dict[str, int], include_usage: bool) -> list[dict[str, Any]]:
    base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model, "system_fingerprint": "fake"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    chunks = [chunk({"role": "assistant", "content": "" if not answer.tool_calls else None})]
    for piece in split_text(answer.content or ""):
        chunks.append(chunk({"content": piece}))
    for index, call in enumerate(answer.tool_calls or []):
        args = call["function"]["arguments"]
        half = len(args) // 2
        chunks.append(chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                             "function": {"name": call["function"]["name"], "arguments": ""}}]}))
        for part in (args[:half], args[half:]):
            if part:
                chunks.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]}))
    chunks.append(chunk({}, answer.finish_reason))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": usage})
    return chunks


# --- routes ---------------------------------------------------------------------------------


class FakeServer:
    def __init__(self) -> None:
        self.state = State()

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    request = await read_request(reader)
                except HttpError as exc:
                    await send_json(writer, exc.status, openai_error(exc.status, str(exc)), keep_alive=False)
                    break
                if request is None:
                    break
                keep_open = await self.route(request, reader, writer)
                if not (request.keep_alive and keep_open):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def route(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; returns False when the connection must close."""
        path = req.path.rstrip("/") or "/"
        if path in ("/v1/chat/completions", "/chat/completions"):
            if req.method != "POST":
                await send_json(writer, 405, openai_error(405, "use POST"), req.keep_alive)
                return True
            return await self.chat_completions(req, reader, writer)
        if path in ("/v1/models", "/models") and req.method == "GET":
            await send_json(writer, 200, {"object": "list", "data": [
                {"id": FAKE_MODEL, "object": "model", "created": 0, "owned_by": "fake"}]}, req.keep_alive)
            return True
        if path == "/_fake/requests" and req.method == "GET":
            await send_json(writer, 200, {"requests": list(self.state.requests)}, req.keep_alive)
            return True
        if path == "/_fake/reset" and req.method == "POST":
            self.state.reset()
            await send_json(writer, 200, {"ok": True}, req.keep_alive)
            return True
        if path == "/_fake/config" and req.method == "POST":
            return await self.configure(req, writer)
        if path == "/health":
            await send_json(writer, 200, {"ok": True, "fake": True}, req.keep_alive)
            return True
        await send_json(writer, 404, openai_error(404, f"no route {req.method} {path}"), req.keep_alive)
        return True

    async def configure(self, req: Request, writer: asyncio.StreamWriter) -> bool:
        try:
            settings = json.loads(req.body or b"{}")
            if not isinstance(settings, dict):
                raise ValueError("config must be an object")
            config = self.state.config
            if "latency_ms" in settings:
                config.latency_ms = max(0, int(settings["latency_ms"] or 0))
            if "fail_status" in settings:
                config.fail_status = None if settings["fail_status"] is None else int(settings["fail_status"])
            if "reply" in settings:
                config.reply = None if settings["reply"] is None else str(settings["reply"])
            if "fail_rate" in settings:
                config.fail_rate = min(1.0, max(0.0, float(settings["fail_rate"] or 0)))
                config.fail_seed = int(settings.get("fail_seed") or 0)
                self.state.rng = random.Random(config.fail_seed)
        except (ValueError, TypeError) as exc:
            await send_json(writer, 400, {"error": {"message": str(exc)}}, req.keep_alive)
            return True
        await send_json(writer, 200, {"ok": True, "config": self.state.config.__dict__}, req.keep_alive)
        return True

    async def chat_completions(self, req: Request, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> bool:
        try:
            body = json.loads(req.body)
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                raise ValueError("messages must be a list")
        except ValueError as exc:
            await send_json(writer, 400, openai_error(400, f"invalid request body: {exc}"), req.keep_alive)
            return True
        self.state.requests.append(body)
        messages: list[dict[str, Any]] = [m for m in body["messages"] if isinstance(m, dict)]
        user_text = last_user_text(messages)
        config = self.state.config
        model = str(body.get("model") or FAKE_MODEL)

        delay_ms = config.latency_ms + sum(int(m) for m in SLEEP_RE.findall(user_text))
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if "[[timeout]]" in user_text:
            await self.hold_until_disconnect(reader)
            return False

        status: int | None = config.fail_status
        fail = FAIL_RE.search(user_text)
        if status is None and fail:
            status = int(fail.group(1))
        fail_times = FAIL_TIMES_RE.search(user_text)
        if status is None and fail_times:
            served = self.state.failures.get(user_text, 0)
            if served < int(fail_times.group(1)):
                self.state.failures[user_text] = served + 1
                status = int(fail_times.group(2))
        if status is None and config.fail_rate and self.state.rng.random() < config.fail_rate:
            status = 503
        # the request log tells a failed call from one that answered (model calls per run)
        body["_fake_status"] = status or 200
        if status is not None:
            extra = {"retry-after": "1"} if status == 429 else None
            await send_json(writer, status, openai_error(status, f"fake failure (HTTP {status})"),
                            req.keep_alive, extra)
            return True
        if "[[malformed]]" in user_text:
            await send(writer, 200, b"this is {not json", keep_alive=req.keep_alive)
            return True

        answer = decide(messages, config, user_text)
        usage = usage_for(messages, answer)
        if body.get("stream") is True:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            await self.stream(writer, stream_chunks(model, answer, usage, include_usage), req.keep_alive)
            return True
        await send_json(writer, 200, completion_object(model, answer, usage), req.keep_alive)
        return True

    @staticmethod
    async def stream(writer: asyncio.StreamWriter, chunks: list[dict[str, Any]], keep_alive: bool) -> None:
        writer.write(response_head(200, {
            "content-type": "text/event-stream", "cache-control": "no-cache",
            "transfer-encoding": "chunked", "connection": "keep-alive" if keep_alive else "close"}))
        events = [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]
        for event in events:
            writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    @staticmethod
    async def hold_until_disconnect(reader: asyncio.StreamReader) -> None:
        """[[timeout]]: never answer; return once the client has given up."""
        while await reader.read(65536):
            pass


BANNER = """
==========================================================================
  FAKE OpenAI-compatible model on http://{host}:{port}/v1
  Replies are scripted echoes, NOT a real LLM (tests/fakes/openai_server.py).
  Set OPENAI_API_KEY (and OPENAI_BASE_URL) to use a real model.
==========================================================================
"""


async def serve(host: str, port: int) -> None:
    fake = FakeServer()
    server = await asyncio.start_server(fake.handle_connection, host, port, backlog=2048)
    banner = BANNER.format(host=host, port=port)
    print(banner, flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="FAKE OpenAI-compatible chat completions server")
    parser.add_argument("--port", type=int, default=8911)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
