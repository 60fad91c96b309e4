-- The local stack's integration URL policy: its own tickets MCP server listens
-- on 127.0.0.1 over plain HTTP. Applied after the migrations, only locally; a
-- real project keeps the strict default (docs/integrations.md).
update chat_private.integration_policy set allow_http = true, allow_loopback = true;
