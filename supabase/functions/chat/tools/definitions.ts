// The agent's tools: OpenAI function-calling definitions and argument checks.
//
// The JSON schemas below are both what the model is shown and what its
// arguments are validated against (one source of truth), so a model that
// ignores the schema gets a precise `{"error": ...}` tool result back and can
// correct itself in the next round instead of failing the turn. Rules the
// database owns (cron grammar, IANA zones, template variables) are left to
// the database, whose error messages are returned the same way.

export type JsonSchema =
  | {
    type: "object";
    description?: string;
    properties: Record<string, JsonSchema>;
    required?: string[];
    additionalProperties: false;
  }
  | { type: "object"; description?: string; additionalProperties: { type: "string" } }
  // any JSON object (its size is bounded where it is used)
  | { type: "object"; description?: string; additionalProperties: true }
  | {
    type: "string";
    description?: string;
    minLength?: number;
    maxLength?: number;
    enum?: string[];
    format?: "uuid" | "date-time";
  }
  | { type: "integer"; description?: string; minimum?: number; maximum?: number }
  | { type: "boolean"; description?: string };

export interface ToolDefinition {
  type: "function";
  function: { name: string; description: string; parameters: JsonSchema };
}

export const SCHEDULER_TOOLS = [
  "create_schedule",
  "list_schedules",
  "update_schedule",
  "pause_schedule",
  "resume_schedule",
  "delete_schedule",
  "run_schedule_now",
] as const;
export type SchedulerTool = typeof SCHEDULER_TOOLS[number];
export const REQUEST_USER_INPUT = "request_user_input";
export const REPORT_TASK_STATUS = "report_task_status";
export type ToolName = SchedulerTool | typeof REQUEST_USER_INPUT | typeof REPORT_TASK_STATUS;
/** Tools of scheduled runs only, offered whatever the agent's tool settings. */
const RUN_TOOLS: ToolName[] = [REQUEST_USER_INPUT, REPORT_TASK_STATUS];
/** The largest state_update accepted, as JSON text. */
export const STATE_UPDATE_MAX_CHARS = 16000;

/**
 * The keys of a task's state the scheduler keeps for itself (the question a
 * task waits on, completion after the answer, a budget pause): the database's
 * scheduler.lifecycle_state_keys(), which drops them from every report
 * (tests/integration/test_lifecycle_state_keys.py keeps the two lists equal).
 * Never shown to the agent as its state; a report that sets one is refused.
 */
export const LIFECYCLE_STATE_KEYS: ReadonlySet<string> = new Set([
  "pending_question",
  "waiting_conversation_id",
  "waiting_execution_id",
  "complete_after_reply",
  "budget_paused_until",
]);

const scheduleId: JsonSchema = { type: "string", format: "uuid", description: "The schedule's id (from list_schedules)." };
const scheduleFields: Record<string, JsonSchema> = {
  name: { type: "string", minLength: 1, maxLength: 200, description: "Short name, e.g. 'Weekly goals review'." },
  prompt: {
    type: "string",
    minLength: 1,
    maxLength: 10000,
    description: "The message you will receive at each run, written as the user's request. " +
      "May use {{NOW}}, {{TODAY}}, {{YESTERDAY}}, {{LAST_7_DAYS}}, {{LAST_30_DAYS}}, {{WEEKDAY}}, {{MONTH}} " +
      "or variables defined in prompt_variables.",
  },
  description: { type: "string", maxLength: 2000 },
  schedule_type: {
    type: "string",
    enum: ["cron", "interval", "once", "manual"],
    description: "Inferred from cron_expression / interval_seconds / run_at when omitted.",
  },
  cron_expression: {
    type: "string",
    minLength: 1,
    maxLength: 200,
    description: "Five fields: minute hour day-of-month month day-of-week, e.g. '0 9 * * 1' = Mondays 09:00.",
  },
  interval_seconds: { type: "integer", minimum: 1, maximum: 31622400, description: "Run every N seconds." },
  run_at: { type: "string", format: "date-time", description: "One-off run, ISO 8601 with offset." },
  timezone: {
    type: "string",
    minLength: 1,
    maxLength: 64,
    description: "IANA time zone for cron schedules, e.g. 'Europe/Berlin'. Default UTC.",
  },
  prompt_variables: {
    type: "object",
    additionalProperties: { type: "string" },
    description: "Values for {{NAME}} placeholders in the prompt.",
  },
  conversation_mode: {
    type: "string",
    enum: ["reuse", "new_per_run"],
    description: "reuse (default): runs post into this conversation; new_per_run: a new conversation each run.",
  },
  max_runs: { type: "integer", minimum: 1, maximum: 1000000 },
  ends_at: { type: "string", format: "date-time", description: "No runs after this instant." },
};

function fn(name: ToolName, description: string, parameters: JsonSchema): ToolDefinition {
  return { type: "function", function: { name, description, parameters } };
}

function only<K extends string>(keys: K[]): Record<K, JsonSchema> {
  return Object.fromEntries(keys.map((k) => [k, scheduleFields[k]])) as Record<K, JsonSchema>;
}

export const TOOL_DEFINITIONS: Record<ToolName, ToolDefinition> = {
  create_schedule: fn(
    "create_schedule",
    "Create a scheduled task: at each occurrence the prompt is sent to you in this conversation " +
      "and you answer it. Use for reminders, recurring check-ins and one-off follow-ups.",
    { type: "object", properties: { ...scheduleFields }, required: ["name", "prompt"], additionalProperties: false },
  ),
  list_schedules: fn("list_schedules", "List the user's scheduled tasks for this agent.", {
    type: "object",
    properties: {
      status: { type: "string", enum: ["active", "paused", "waiting_input", "completed", "error"] },
      all_agents: { type: "boolean", description: "Include tasks of the user's other agents." },
      limit: { type: "integer", minimum: 1, maximum: 100 },
    },
    additionalProperties: false,
  }),
  update_schedule: fn("update_schedule", "Change a scheduled task; give only the fields to change.", {
    type: "object",
    properties: {
      schedule_id: scheduleId,
      ...only([
        "name",
        "prompt",
        "description",
        "schedule_type",
        "cron_expression",
        "interval_seconds",
        "run_at",
        "timezone",
        "prompt_variables",
        "conversation_mode",
        "max_runs",
        "ends_at",
      ]),
    },
    required: ["schedule_id"],
    additionalProperties: false,
  }),
  pause_schedule: fn("pause_schedule", "Pause a scheduled task (no runs until resumed).", idOnly()),
  resume_schedule: fn("resume_schedule", "Resume a paused task; its next run is computed from now.", idOnly()),
  delete_schedule: fn("delete_schedule", "Delete a scheduled task for good.", idOnly()),
  run_schedule_now: fn("run_schedule_now", "Run a scheduled task once now, whatever its schedule.", idOnly()),
  request_user_input: fn(
    "request_user_input",
    "Ask the user a question when this scheduled run cannot continue without their answer. " +
      "The run stops and resumes when the user replies.",
    {
      type: "object",
      properties: { question: { type: "string", minLength: 1, maxLength: 2000 } },
      required: ["question"],
      additionalProperties: false,
    },
  ),
  report_task_status: fn(
    "report_task_status",
    "Report the outcome of this scheduled run (call it at most once, at the end). " +
      "continue: the task goes on with its schedule (optionally next_run_at sooner or later); " +
      "needs_input: you cannot go on without the user's answer to `question` (the task waits for it); " +
      "complete: the task's goal is reached (a recurring task stops only with final = true). " +
      "state_update is merged into the task's state, which you see at the next run.",
    {
      type: "object",
      properties: {
        status: { type: "string", enum: ["continue", "needs_input", "complete"] },
        question: { type: "string", minLength: 1, maxLength: 2000, description: "Required for needs_input." },
        state_update: {
          type: "object",
          additionalProperties: true,
          description: "Keys to set in the task's state (top-level keys replace the old values).",
        },
        summary: { type: "string", maxLength: 2000, description: "One or two sentences on what this run did." },
        next_run_at: {
          type: "string",
          format: "date-time",
          description: "continue only: when the next run should happen (in the future; capped at the task's end).",
        },
        final: { type: "boolean", description: "complete only: stop a recurring task for good." },
      },
      required: ["status"],
      additionalProperties: false,
    },
  ),
};

function idOnly(): JsonSchema {
  return { type: "object", properties: { schedule_id: scheduleId }, required: ["schedule_id"], additionalProperties: false };
}

/**
 * The tools offered in a turn. request_user_input only makes sense when no
 * user is waiting on the other end (scheduled runs); `enabled` is the agent's
 * settings.tools list (null = all).
 */
export function toolsFor(options: { actAs: boolean; enabled: string[] | null }): ToolDefinition[] {
  const names: ToolName[] = [...SCHEDULER_TOOLS];
  if (options.actAs) names.push(...RUN_TOOLS);
  const allowed = options.enabled === null ? null : new Set(options.enabled);
  return names
    .filter((n) => allowed === null || allowed.has(n) || RUN_TOOLS.includes(n))
    .map((n) => TOOL_DEFINITIONS[n]);
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
// ISO 8601 date-time with an explicit offset: a naive time is ambiguous.
const DATE_TIME_RE = /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$/i;

/** Errors of `value` against `schema`, as readable sentences. */
export function schemaErrors(value: unknown, schema: JsonSchema, path: string): string[] {
  switch (schema.type) {
    case "string": {
      if (typeof value !== "string") return [`${path} must be a string`];
      const errors: string[] = [];
      if (schema.minLength !== undefined && value.length < schema.minLength) {
        errors.push(schema.minLength === 1 ? `${path} must not be empty` : `${path} is too short`);
      }
      if (schema.maxLength !== undefined && value.length > schema.maxLength) {
        errors.push(`${path} must be at most ${schema.maxLength} characters`);
      }
      if (schema.enum && !schema.enum.includes(value)) errors.push(`${path} must be one of ${schema.enum.join(", ")}`);
      if (schema.format === "uuid" && !UUID_RE.test(value)) errors.push(`${path} must be a UUID`);
      if (schema.format === "date-time" && (!DATE_TIME_RE.test(value) || Number.isNaN(Date.parse(value)))) {
        errors.push(`${path} must be an ISO 8601 date-time with offset, e.g. 2030-01-31T09:00:00+01:00`);
      }
      return errors;
    }
    case "integer": {
      if (typeof value !== "number" || !Number.isInteger(value)) return [`${path} must be an integer`];
      if (schema.minimum !== undefined && value < schema.minimum) return [`${path} must be >= ${schema.minimum}`];
      if (schema.maximum !== undefined && value > schema.maximum) return [`${path} must be <= ${schema.maximum}`];
      return [];
    }
    case "boolean":
      return typeof value === "boolean" ? [] : [`${path} must be true or false`];
    case "object": {
      if (value === null || typeof value !== "object" || Array.isArray(value)) return [`${path} must be an object`];
      const obj = value as Record<string, unknown>;
      if (schema.additionalProperties === true) return [];
      if (!("properties" in schema)) {
        return Object.entries(obj).flatMap(([k, v]) => schemaErrors(v, schema.additionalProperties, `${path}.${k}`));
      }
      const errors: string[] = [];
      for (const key of schema.required ?? []) {
        if (obj[key] === undefined || obj[key] === null) errors.push(`${path}.${key} is required`);
      }
      for (const [key, v] of Object.entries(obj)) {
        const sub = schema.properties[key];
        if (!sub) {
          errors.push(`${path}.${key} is not a known argument`);
        } else if (v !== null) {
          // null means "not given": models often send explicit nulls for optional fields
          errors.push(...schemaErrors(v, sub, `${path}.${key}`));
        }
      }
      return errors;
    }
  }
}

export type ArgsResult = { ok: true; args: Record<string, unknown> } | { ok: false; error: string };

/** Drop null-valued keys (the model's way of saying "not given"). */
function compact(obj: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(obj).filter(([, v]) => v !== null && v !== undefined));
}

const SCHEDULE_FIELD_OF: Record<string, string> = {
  cron: "cron_expression",
  interval: "interval_seconds",
  once: "run_at",
};

/**
 * Which schedule the arguments describe: the explicit schedule_type or the
 * one implied by the single schedule field given.
 */
export function resolveScheduleType(args: Record<string, unknown>): { type: string } | { error: string } {
  const given = Object.entries(SCHEDULE_FIELD_OF).filter(([, field]) => args[field] !== undefined);
  const explicit = typeof args.schedule_type === "string" ? args.schedule_type : undefined;
  if (explicit) {
    const field = SCHEDULE_FIELD_OF[explicit];
    const others = given.filter(([type]) => type !== explicit).map(([, f]) => f);
    if (others.length > 0) return { error: `schedule_type ${explicit} does not take ${others.join(", ")}` };
    if (field && args[field] === undefined) return { error: `schedule_type ${explicit} needs ${field}` };
    return { type: explicit };
  }
  if (given.length > 1) {
    return { error: `give only one of ${given.map(([, f]) => f).join(", ")}` };
  }
  if (given.length === 0) return { error: "" };
  return { type: given[0][0] };
}

/** Parse and check a tool call's JSON arguments. */
export function validateToolArgs(name: string, rawArguments: string, offered: ReadonlySet<string>): ArgsResult {
  if (!offered.has(name)) return { ok: false, error: `unknown tool ${name}` };
  let parsed: unknown;
  try {
    parsed = rawArguments.trim() === "" ? {} : JSON.parse(rawArguments);
  } catch {
    return { ok: false, error: "arguments are not valid JSON" };
  }
  const definition = TOOL_DEFINITIONS[name as ToolName];
  const errors = schemaErrors(parsed, definition.function.parameters, "arguments");
  if (errors.length > 0) return { ok: false, error: `invalid arguments for ${name}: ${errors.join("; ")}` };
  const args = compact(parsed as Record<string, unknown>);

  if (name === "create_schedule") {
    const resolved = resolveScheduleType(args);
    if ("error" in resolved) {
      return {
        ok: false,
        error: resolved.error ||
          "give the schedule: cron_expression, interval_seconds or run_at (or schedule_type manual)",
      };
    }
    args.schedule_type = resolved.type;
  }
  if (name === REPORT_TASK_STATUS) {
    const error = reportError(args, Date.now());
    if (error !== null) return { ok: false, error: `invalid arguments for ${name}: ${error}` };
  }
  if (name === "update_schedule") {
    const changes = Object.keys(args).filter((k) => k !== "schedule_id");
    if (changes.length === 0) return { ok: false, error: "update_schedule needs at least one field to change" };
    const touchesSchedule = ["schedule_type", "cron_expression", "interval_seconds", "run_at"].some((k) => k in args);
    if (touchesSchedule) {
      const resolved = resolveScheduleType(args);
      if ("error" in resolved) {
        return { ok: false, error: resolved.error || "schedule_type manual takes no schedule field" };
      }
      args.schedule_type = resolved.type;
    }
  }
  return { ok: true, args };
}

/** Rules of report_task_status the schema cannot say (checked at `nowMs`). */
export function reportError(args: Record<string, unknown>, nowMs: number): string | null {
  const status = args.status;
  if (status === "needs_input" && args.question === undefined) return "needs_input needs a question";
  if (status !== "needs_input" && args.question !== undefined) return "question is for needs_input only";
  if (args.next_run_at !== undefined) {
    if (status !== "continue") return "next_run_at is for continue only";
    if (Date.parse(args.next_run_at as string) <= nowMs) return "next_run_at must be in the future";
  }
  if (args.final !== undefined && status !== "complete") return "final is for complete only";
  if (args.state_update !== undefined && JSON.stringify(args.state_update).length > STATE_UPDATE_MAX_CHARS) {
    return `state_update must be at most ${STATE_UPDATE_MAX_CHARS} characters of JSON`;
  }
  const reserved = Object.keys((args.state_update ?? {}) as Record<string, unknown>)
    .filter((k) => LIFECYCLE_STATE_KEYS.has(k));
  if (reserved.length > 0) {
    return `state_update may not set ${reserved.join(", ")}: the scheduler keeps those keys`;
  }
  return null;
}
