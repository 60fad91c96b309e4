// The chat edge function: POST a message, get the agent's reply (JSON or SSE).
//
// Two callers: a signed-in user (their access token; RLS decides what they
// can touch) and the scheduler's worker acting as a user (service credential
// + X-Service allow-list + a context whose parts must belong together). Both
// run the turn under the same RLS context. docs/chat/api.md is the contract.
//
// verify_jwt is off for this function in supabase/config.toml: it verifies
// every caller itself, because the new sb_secret_ keys are not JWTs.

import { ChatError, internalError } from "../_shared/errors.ts";
import { createServiceRoleTokenCheck, createUserTokenVerifier, type JwtConfig } from "../_shared/jwt.ts";
import { PlatformEnvError } from "../_shared/keys.ts";
import { createSdkModelClient } from "../_shared/openai_sdk.ts";
import { encodeEvent } from "../_shared/sse.ts";
import { type AuthDeps, authenticate, createServiceCredentialCheck, credentialsOf } from "./auth.ts";
import { type Config, loadConfig } from "./config.ts";
import { createPool } from "./db.ts";
import { limitRefusal } from "./limits.ts";
import { MAX_BODY_BYTES, parseActAsBody, parseJson, parseUserBody, readBodyText } from "./request.ts";
import { actAsTurn, type TurnDeps, type TurnEvent, type TurnResult, userTurn } from "./turn.ts";
import { KeyRingError, loadKeyRing } from "./mcp/crypto.ts";
import { handleIntegrations, INTEGRATION_PATHS } from "./mcp/endpoint.ts";

const CHAT_PATHS = new Set(["/", "/chat", "/functions/v1/chat"]);

const CORS_HEADERS: Record<string, string> = {
  "access-control-allow-origin": "*",
  "access-control-allow-headers": "authorization, x-client-info, apikey, content-type, accept, x-service",
  "access-control-allow-methods": "POST, OPTIONS",
};

/** The settings, or exit with the reason: a misconfigured function must not serve. */
function configOrExit(): Config {
  try {
    return loadConfig();
  } catch (err) {
    if (!(err instanceof PlatformEnvError)) throw err;
    console.error(`chat: configuration error: ${err.message}`);
    Deno.exit(78); // EX_CONFIG
  }
}

const config = configOrExit();
const keyRing = await loadKeyRing(Deno.env.get("CHAT_INTEGRATIONS_KEYS")).catch((err) => {
  if (!(err instanceof KeyRingError)) throw err;
  console.error(`chat: configuration error: ${err.message}`);
  Deno.exit(78); // EX_CONFIG
});
const sql = createPool(config.dbUrl, config.dbPoolMax);
const deps: TurnDeps = {
  sql,
  config,
  mcp: { sql, keyRing, settings: config.mcp },
  model: createSdkModelClient({
    baseUrl: config.openaiBaseUrl,
    apiKey: config.openaiApiKey,
    timeoutMs: config.modelTimeoutMs,
  }),
};
// keys are imported once here, not per request
const jwtConfig: JwtConfig = {
  jwks: config.jwks,
  jwksUrl: config.jwksUrl,
  legacySecret: config.legacyJwtSecret,
  issuer: config.jwtIssuer,
};
const authDeps: AuthDeps = {
  verifyUserToken: createUserTokenVerifier(jwtConfig),
  isServiceCredential: createServiceCredentialCheck({
    secretKeys: config.secretKeys,
    serviceRoleKey: config.serviceRoleKey,
    isServiceRoleToken: createServiceRoleTokenCheck(jwtConfig),
  }),
  serviceAllowlist: config.serviceAllowlist,
};

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...CORS_HEADERS, ...headers },
  });
}

function errorResponse(err: ChatError): Response {
  return json(err.status, err.toBody(), err.headers);
}

/** Known refusals pass through (the database's limits too); anything else is logged and becomes a bare 500. */
function asChatError(err: unknown): ChatError {
  if (err instanceof ChatError) return err;
  const refusal = limitRefusal(err);
  if (refusal) return refusal;
  console.error("chat: unexpected error:", err instanceof Error ? (err.stack ?? err.message) : err);
  return internalError();
}

async function readBody(req: Request): Promise<unknown> {
  return parseJson(await readBodyText(req, MAX_BODY_BYTES));
}

type Run = (onEvent?: (event: TurnEvent) => void) => Promise<TurnResult>;

/**
 * Stream a turn as SSE. The 200 is committed only when the first event is
 * ready, so anything that fails before (model refused, provider down, empty
 * reply) still gets its real status and a JSON error body; later failures
 * arrive as `event: error`.
 */
function streamTurn(run: Run): Promise<Response> {
  return new Promise((resolve) => {
    let controller!: ReadableStreamDefaultController<Uint8Array>;
    let open = true;
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        controller = c;
      },
      cancel() {
        open = false;
      },
    });
    let started = false;
    const begin = () => {
      if (started) return;
      started = true;
      resolve(
        new Response(stream, {
          status: 200,
          headers: {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            ...CORS_HEADERS,
          },
        }),
      );
    };
    const send = (event: string, data: unknown) => {
      begin();
      if (!open) return;
      try {
        controller.enqueue(encodeEvent(event, data));
      } catch {
        open = false; // the client went away
      }
    };
    const close = () => {
      if (!open) return;
      open = false;
      try {
        controller.close();
      } catch {
        // already closed by the client
      }
    };
    run((event) => {
      if (event.type === "delta") send("delta", { content: event.content });
      else send("tool", event.call);
    }).then(
      (result) => {
        send("done", result);
        close();
      },
      (err) => {
        const error = asChatError(err);
        if (!started) {
          resolve(errorResponse(error));
          return;
        }
        send("error", error.toBody());
        close();
      },
    );
  });
}

async function handleChat(req: Request): Promise<Response> {
  const caller = await authenticate(credentialsOf(req.headers), authDeps);
  const body = await readBody(req);
  const acceptsSse = (req.headers.get("accept") ?? "").includes("text/event-stream");
  const options = { signal: req.signal };

  let run: Run;
  let stream: boolean;
  if (caller.kind === "user") {
    const request = parseUserBody(body);
    stream = request.stream || acceptsSse;
    run = (onEvent) => userTurn(deps, caller, request, { ...options, onEvent });
  } else {
    const request = parseActAsBody(body);
    stream = request.stream || acceptsSse;
    // A scheduled turn is finished and stored even when its caller disconnects (a
    // worker killed mid-call): the rescued attempt then finds the stored reply and
    // the model is not paid twice. A cancelled or timed-out run's reply is still
    // refused when stored (its execution is finished).
    run = (onEvent) => actAsTurn(deps, request, { onEvent });
  }
  if (stream) return await streamTurn(run);
  return json(200, await run());
}

async function handle(req: Request): Promise<Response> {
  const path = new URL(req.url).pathname.replace(/\/+$/, "") || "/";
  if (path === "/health") {
    return req.method === "GET" || req.method === "HEAD"
      ? json(200, { ok: true })
      : json(405, new ChatError(405, "method_not_allowed", "use GET").toBody(), { allow: "GET" });
  }
  if (INTEGRATION_PATHS.has(path) && req.method === "POST") {
    try {
      const caller = await authenticate(credentialsOf(req.headers), authDeps);
      if (caller.kind !== "user") throw new ChatError(403, "user_token_required", "integrations are managed with a user's own token");
      return json(200, await handleIntegrations(deps.mcp!, caller, await readBody(req)));
    } catch (err) {
      return errorResponse(asChatError(err));
    }
  }
  if (!CHAT_PATHS.has(path) && !INTEGRATION_PATHS.has(path)) {
    return errorResponse(new ChatError(404, "not_found", `no route ${path}`));
  }
  if (req.method === "OPTIONS") return new Response(null, { status: 204, headers: CORS_HEADERS });
  if (req.method !== "POST") {
    return errorResponse(
      new ChatError(405, "method_not_allowed", "use POST", { headers: { allow: "POST, OPTIONS" } }),
    );
  }
  try {
    return await handleChat(req);
  } catch (err) {
    return errorResponse(asChatError(err));
  }
}

const server = Deno.serve({
  port: config.port,
  // loopback unless told otherwise, under plain Deno. The hosted Edge Runtime ignores hostname
  // and port (its Deno.serve listens on no socket): docs/security.md
  hostname: Deno.env.get("HOST") ?? "127.0.0.1",
  onListen: ({ hostname, port }) => console.log(`chat function listening on http://${hostname}:${port}`),
}, handle);

// Stop taking requests, let running turns finish, then close the pool.
const shutdown = async () => {
  await server.shutdown();
  await sql.end({ timeout: 5 });
  Deno.exit(0);
};
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  try {
    Deno.addSignalListener(signal, () => void shutdown());
  } catch {
    // signals are not available on every platform (Deno Deploy)
  }
}
