// The MCP tools of one turn: connect to the caller's enabled servers (official
// TypeScript SDK, Streamable HTTP), offer their tools to the model under the
// server's name (`tickets__list_tickets`), run the calls with a timeout and a
// result-size cap.
//
// A turn only ever sees its own user's integrations (store.ts loads them by
// auth.uid()); a scheduled run loads them exactly as a chat turn of the same
// user would. A server that is down, slow, refuses the credential or answers
// too much never fails the turn: the model gets a tool error (or the tools are
// not offered, and the system prompt says why), the call is recorded with
// status "error", and the integration's status and last_error tell the user.

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import type { ToolDefinition } from "../../_shared/openai.ts";
import type { Sql } from "../db.ts";
import type { KeyRing } from "./crypto.ts";
import { type IntegrationRow, type Loaded, loadIntegrations, recordStatus } from "./store.ts";
import { checkConnectTarget, type Resolver, resolveHost, type UrlPolicy } from "./url_policy.ts";

/** Separates the integration's name from the server's tool name. */
export const NAMESPACE_SEPARATOR = "__";
const OPENAI_TOOL_NAME = /^[a-zA-Z0-9_-]{1,64}$/;
const MAX_DESCRIPTION_CHARS = 1000;
const MAX_ERROR_CHARS = 500;

export interface McpSettings {
  /** CHAT_MCP_TIMEOUT_MS: connecting, listing tools, and each call. */
  timeoutMs: number;
  /** CHAT_MCP_RESULT_MAX_CHARS: a larger tool result is refused (the model gets an error). */
  resultMaxChars: number;
  /** CHAT_MCP_TURN_RESULT_MAX_CHARS: all MCP results of one turn together; past it, calls get an error. */
  turnResultMaxChars: number;
  /** CHAT_MCP_TOOLS_TTL_S: how long a server's tool list is reused, per user and server. */
  toolsTtlS: number;
}

export interface McpDeps {
  sql: Sql;
  keyRing: KeyRing | null;
  settings: McpSettings;
  resolve?: Resolver;
}

export interface McpToolOutcome {
  server: string;
  tool: string;
  status: "ok" | "error";
  result: unknown;
}

interface ServerTool {
  name: string;
  description?: string;
  inputSchema: Record<string, unknown>;
}

interface Opened {
  row: IntegrationRow;
  headers: Record<string, string>;
  client: Client | null;
  tools: ServerTool[];
}

/** A turn's MCP tools. */
export interface Toolbox {
  definitions: ToolDefinition[];
  /** A paragraph for the system prompt naming the integrations (empty when none). */
  promptSection: string;
  /** Integrations whose tools could not be offered, and why (kept in the reply's metadata). */
  unavailable: { server: string; error: string }[];
  has(name: string): boolean;
  call(name: string, args: unknown, signal?: AbortSignal): Promise<McpToolOutcome>;
  close(): Promise<void>;
}

export const EMPTY_TOOLBOX: Toolbox = {
  definitions: [],
  promptSection: "",
  unavailable: [],
  has: () => false,
  call: () => Promise.reject(new Error("no MCP tools in this turn")),
  close: () => Promise.resolve(),
};

// Tool lists per user and integration version (updated_at), reused for toolsTtlS.
const toolCache = new Map<string, { tools: ServerTool[]; expires: number }>();
const MAX_CACHE_ENTRIES = 10_000;

function cacheKey(userId: string, row: IntegrationRow): string {
  return `${userId}|${row.id}|${row.updated_at}|${row.key_id ?? ""}`;
}

/** Never let a credential reach a message, a log line or a stored error. */
function redact(text: string, secrets: string[]): string {
  let out = text;
  for (const s of secrets) if (s.length >= 4) out = out.split(s).join("[redacted]");
  return out.length > MAX_ERROR_CHARS ? out.slice(0, MAX_ERROR_CHARS) + "…" : out;
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const cause = (err as { cause?: unknown }).cause;
    const suffix = cause instanceof Error && !err.message.includes(cause.message) ? `: ${cause.message}` : "";
    return err.message + suffix;
  }
  return String(err);
}

async function credentialHeaders(deps: McpDeps, userId: string, row: IntegrationRow): Promise<Record<string, string>> {
  if (row.auth_kind === "none") return {};
  if (!row.ciphertext || !row.key_id) throw new Error("the integration needs a credential and has none");
  if (!deps.keyRing) throw new Error("the function has no CHAT_INTEGRATIONS_KEYS to decrypt the credential");
  const secret = await deps.keyRing.open({ keyId: row.key_id, ciphertext: row.ciphertext }, {
    integrationId: row.id,
    userId,
  });
  return row.auth_kind === "bearer" ? { authorization: `Bearer ${secret}` } : { [row.header_name!]: secret };
}

/** Connect with the SDK; every HTTP request is checked against the URL policy after resolution. */
async function connect(deps: McpDeps, row: IntegrationRow, headers: Record<string, string>, policy: UrlPolicy): Promise<Client> {
  const resolve = deps.resolve ?? resolveHost;
  const written = new URL(row.server_url).href;
  const guardedFetch = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const url = input instanceof Request ? input.url : String(input);
    // the transport sends the URL as the parser serialises it (non-ASCII percent-encoded, so
    // longer): the rule judges the text as written, as it did at write; any other URL as it is
    await checkConnectTarget(url === written ? row.server_url : url, policy, resolve);
    // a redirect could lead anywhere: the policy is checked on the URL written, so refuse them
    return await fetch(input, { ...init, redirect: "error" });
  };
  const transport = new StreamableHTTPClientTransport(new URL(row.server_url), {
    requestInit: { headers },
    fetch: guardedFetch,
  });
  const client = new Client({ name: "agent-tasks-chat", version: "1.0.0" });
  await client.connect(transport, { timeout: deps.settings.timeoutMs });
  return client;
}

/** Open one integration: tools from the cache, else connect and list them. */
async function open(deps: McpDeps, userId: string, row: IntegrationRow, policy: UrlPolicy): Promise<Opened> {
  const headers = await credentialHeaders(deps, userId, row);
  const key = cacheKey(userId, row);
  const cached = toolCache.get(key);
  if (cached && cached.expires > Date.now()) return { row, headers, client: null, tools: cached.tools };
  const client = await connect(deps, row, headers, policy);
  try {
    const listed = await client.listTools(undefined, { timeout: deps.settings.timeoutMs });
    const tools = (listed.tools as ServerTool[]).map((t) => ({
      name: t.name,
      description: t.description,
      inputSchema: t.inputSchema as Record<string, unknown>,
    }));
    if (toolCache.size >= MAX_CACHE_ENTRIES) toolCache.clear();
    toolCache.set(key, { tools, expires: Date.now() + deps.settings.toolsTtlS * 1000 });
    return { row, headers, client, tools };
  } catch (err) {
    await client.close().catch(() => {});
    throw err;
  }
}

/** The text of an MCP tool result (text parts joined; other parts named). */
export function resultText(content: unknown): string {
  if (!Array.isArray(content)) return "";
  return content.map((part) => {
    const p = part as { type?: string; text?: string; resource?: { text?: string; uri?: string } };
    if (p.type === "text") return p.text ?? "";
    if (p.type === "resource") return p.resource?.text ?? `[resource ${p.resource?.uri ?? ""}]`;
    return `[${p.type ?? "content"}]`;
  }).join("\n");
}

/**
 * Offer the tools of the caller's integrations enabled for this agent, as the
 * turn's first transaction loaded them (db.ts; store.ts integrationsStatement).
 */
export async function openToolbox(
  deps: McpDeps,
  who: { claims: string; userId: string },
  loaded: Loaded | null,
): Promise<Toolbox> {
  if (!loaded || loaded.integrations.length === 0) return EMPTY_TOOLBOX;
  const opened: Opened[] = [];
  const unavailable: { server: string; error: string }[] = [];
  const secrets: string[] = [];
  await Promise.all(loaded.integrations.map(async (row) => {
    let headers: Record<string, string> = {};
    try {
      const o = await open(deps, who.userId, row, loaded.policy);
      headers = o.headers;
      secrets.push(...Object.values(o.headers));
      opened.push(o);
      if (o.client) await recordStatus(deps.sql, who.claims, row.id, null);
    } catch (err) {
      const error = redact(describe(err), Object.values(headers));
      unavailable.push({ server: row.name, error });
      await recordStatus(deps.sql, who.claims, row.id, error);
    }
  }));
  opened.sort((a, b) => a.row.name.localeCompare(b.row.name));
  unavailable.sort((a, b) => a.server.localeCompare(b.server));

  const byName = new Map<string, { o: Opened; tool: string }>();
  const definitions: ToolDefinition[] = [];
  for (const o of opened) {
    const allowed = o.row.enabled_tools ? new Set(o.row.enabled_tools) : null;
    for (const tool of o.tools) {
      const name = `${o.row.name}${NAMESPACE_SEPARATOR}${tool.name}`;
      if ((allowed && !allowed.has(tool.name)) || !OPENAI_TOOL_NAME.test(name)) continue;
      byName.set(name, { o, tool: tool.name });
      definitions.push({
        type: "function",
        function: {
          name,
          description: `[${o.row.name}] ${(tool.description ?? tool.name).slice(0, MAX_DESCRIPTION_CHARS)}`,
          parameters: tool.inputSchema ?? { type: "object", properties: {} },
        },
      });
    }
  }
  const lines = opened.map((o) => `- ${o.row.name}${o.row.description ? `: ${o.row.description}` : ""}`);
  lines.push(...unavailable.map((u) => `- ${u.server}: unavailable in this turn (${u.error})`));
  // what this turn's results have added to the prompt and the stored reply so far
  let spent = 0;
  const promptSection = "Connected integrations (their tools are named <integration>__<tool>):\n" + lines.join("\n");

  return {
    definitions,
    promptSection,
    unavailable,
    has: (name) => byName.has(name),
    async call(name, args, signal) {
      const target = byName.get(name)!;
      const { o, tool } = target;
      const base = { server: o.row.name, tool };
      const fail = (error: string): McpToolOutcome => ({ ...base, status: "error", result: { error } });
      if (args === null || typeof args !== "object" || Array.isArray(args)) {
        return fail("the arguments must be a JSON object");
      }
      try {
        o.client ??= await connect(deps, o.row, o.headers, loaded.policy);
        const res = await o.client.callTool({ name: tool, arguments: args as Record<string, unknown> }, undefined, {
          timeout: deps.settings.timeoutMs,
          signal,
        });
        const text = resultText(res.content);
        if (text.length > deps.settings.resultMaxChars) {
          return fail(
            `the tool's result is ${text.length} characters, over the limit of ${deps.settings.resultMaxChars}`,
          );
        }
        if (spent + text.length > deps.settings.turnResultMaxChars) {
          return fail(
            `this turn's tool results would exceed ${deps.settings.turnResultMaxChars} characters; answer with what you have`,
          );
        }
        spent += text.length;
        return res.isError ? { ...base, status: "error", result: { error: text } } : { ...base, status: "ok", result: text };
      } catch (err) {
        return fail(redact(describe(err), secrets));
      }
    },
    async close() {
      await Promise.all(opened.map((o) => o.client?.close().catch(() => {})));
    },
  };
}

/** Connect to one of the caller's integrations and list its tools (`integrations test`). */
export async function testIntegration(
  deps: McpDeps,
  who: { claims: string; userId: string },
  integrationId: string,
): Promise<{ ok: boolean; tools: { name: string; description: string | null }[]; error: string | null } | null> {
  const loaded = await loadIntegrations(deps.sql, who.claims, { integrationId });
  const row = loaded.integrations[0];
  if (!row) return null;
  let headers: Record<string, string> = {};
  try {
    headers = await credentialHeaders(deps, who.userId, row);
    const client = await connect(deps, row, headers, loaded.policy);
    try {
      const listed = await client.listTools(undefined, { timeout: deps.settings.timeoutMs });
      await recordStatus(deps.sql, who.claims, row.id, null);
      return { ok: true, tools: (listed.tools as ServerTool[]).map((t) => ({ name: t.name, description: t.description ?? null })), error: null };
    } finally {
      await client.close().catch(() => {});
    }
  } catch (err) {
    const error = redact(describe(err), Object.values(headers));
    await recordStatus(deps.sql, who.claims, row.id, error);
    return { ok: false, tools: [], error };
  }
}
