"""A real MCP server (official Python SDK, Streamable HTTP) whose tools misbehave on purpose:
`slow` sleeps, `boom` raises, `big` answers N characters. The end-to-end tests point an
integration at it to check the chat function's timeout, error and size-cap handling.

    python tests/e2e/mcp_misbehaving.py --port 8931
"""

from __future__ import annotations

import argparse
import asyncio

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

server: MCPServer = MCPServer(name="misbehaving")


@server.tool(structured_output=False, description="Sleep, then answer.")
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@server.tool(structured_output=False, description="Always fails.")
def boom() -> str:
    raise RuntimeError("the tickets backend is on fire")


@server.tool(structured_output=False, description="Answer `chars` characters.")
def big(chars: int) -> str:
    return "x" * chars


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    app = server.streamable_http_app(stateless_http=True, json_response=True, transport_security=security)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
