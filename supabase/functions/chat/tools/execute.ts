// The scheduler tools, executed as the user.
//
// Each call is its own short transaction with role authenticated and the
// user's claims: RLS, the column grants and the agent_tasks triggers decide
// exactly as they would for the user's own supabase-js call, so a tool can
// never do more than the user could. Database refusals (invalid cron, unknown
// time zone or template variable, not found) become `{"error": ...}` results
// the model reads and can act on.

import { asUser, type Json, type Row, type Sql, type Tx } from "../db.ts";
import type { SchedulerTool } from "./definitions.ts";

export interface ToolContext {
  sql: Sql;
  claims: string;
  agentId: string;
  conversationId: string;
}

export type ToolOutcome = { ok: true; result: Record<string, unknown> } | { ok: false; result: { error: string } };

const ok = (result: Record<string, unknown>): ToolOutcome => ({ ok: true, result });
const fail = (error: string): ToolOutcome => ({ ok: false, result: { error } });

// Columns returned to the model: enough to describe and refer to a schedule.
function taskJson(tx: Tx) {
  return tx`json_build_object(
    'id', t.id, 'name', t.name, 'status', t.status, 'schedule_type', t.schedule_type,
    'cron_expression', t.cron_expression, 'interval_seconds', t.interval_seconds, 'run_at', t.run_at,
    'timezone', t.timezone, 'next_run_at', t.next_run_at, 'last_run_at', t.last_run_at,
    'prompt', t.prompt_template, 'conversation_mode', t.conversation_mode, 'agent_id', t.agent_id)`;
}

// SQLSTATE classes whose messages are meant for the writer of the data
// (our migrations raise readable messages with these codes).
// PT4xx: the operator's rate limits and budgets (scheduler.limits), whose messages name the limit
const USER_FACING = /^(22|23|P0002|42501|55000|PT4)/;

function dbErrorMessage(err: unknown): string | null {
  if (err && typeof err === "object" && "code" in err && typeof (err as { code: unknown }).code === "string") {
    const { code, message } = err as { code: string; message: string };
    if (code === "42501") return "permission denied (not your schedule?)";
    if (code === "23503") return "the agent or conversation referenced does not exist or is not yours";
    if (USER_FACING.test(code)) return message;
  }
  return null;
}

const SCHEDULE_COLUMNS = ["cron_expression", "interval_seconds", "run_at"] as const;
const COLUMN_OF_TYPE: Record<string, string | null> = {
  cron: "cron_expression",
  interval: "interval_seconds",
  once: "run_at",
  manual: null,
};

/** Task columns from tool arguments; `prompt` is the template the agent receives. */
function taskColumns(args: Record<string, unknown>): Record<string, unknown> {
  const cols: Record<string, unknown> = {};
  const direct = [
    "name",
    "description",
    "schedule_type",
    "cron_expression",
    "interval_seconds",
    "run_at",
    "timezone",
    "conversation_mode",
    "max_runs",
    "ends_at",
  ];
  for (const key of direct) if (args[key] !== undefined) cols[key] = args[key];
  if (args.prompt !== undefined) cols.prompt_template = args.prompt;
  if (typeof args.schedule_type === "string") {
    // switching schedule type clears the other schedule fields (a check constraint requires it)
    const keep = COLUMN_OF_TYPE[args.schedule_type];
    for (const column of SCHEDULE_COLUMNS) if (column !== keep) cols[column] = null;
  }
  return cols;
}

async function execute(name: SchedulerTool, args: Record<string, unknown>, ctx: ToolContext): Promise<ToolOutcome> {
  return await asUser(ctx.sql, ctx.claims, async (tx) => {
    const id = args.schedule_id as string | undefined;
    switch (name) {
      case "create_schedule": {
        const cols = taskColumns(args);
        const mode = (cols.conversation_mode as string | undefined) ?? "reuse";
        cols.agent_id = ctx.agentId;
        cols.conversation_mode = mode;
        // reuse: the scheduled runs post into the conversation the task was created from
        cols.conversation_id = mode === "reuse" ? ctx.conversationId : null;
        if (args.prompt_variables !== undefined) cols.prompt_variables = tx.json(args.prompt_variables as Json);
        const [row] = await tx<{ task: Json }[]>`
          with t as (insert into public.agent_tasks ${tx(cols as Row, Object.keys(cols))} returning *)
          select ${taskJson(tx)} as task from t`;
        return ok({ created: row.task });
      }
      case "list_schedules": {
        const status = (args.status as string | undefined) ?? null;
        const allAgents = args.all_agents === true;
        const limit = (args.limit as number | undefined) ?? 50;
        const [row] = await tx<{ tasks: Json }[]>`
          select coalesce(json_agg(x.task order by x.created_at desc), '[]'::json) as tasks
          from (
            select ${taskJson(tx)} as task, t.created_at
            from public.agent_tasks t
            where (${allAgents} or t.agent_id = ${ctx.agentId}::uuid)
              and (${status}::text is null or t.status = ${status}::text)
            order by t.created_at desc
            limit ${limit}::integer
          ) x`;
        return ok({ schedules: row.tasks });
      }
      case "update_schedule": {
        const cols = taskColumns(args);
        if (cols.conversation_mode === "reuse") cols.conversation_id = ctx.conversationId;
        if (cols.conversation_mode === "new_per_run") cols.conversation_id = null;
        const columns = Object.keys(cols);
        const values: Record<string, unknown> = { ...cols };
        if (args.prompt_variables !== undefined) {
          columns.push("prompt_variables");
          values.prompt_variables = tx.json(args.prompt_variables as Json);
        }
        const rows = await tx<{ task: Json }[]>`
          update public.agent_tasks t set ${tx(values as Row, columns)}
          where t.id = ${id!}::uuid
          returning ${taskJson(tx)} as task`;
        if (rows.length === 0) return fail(`schedule ${id} not found`);
        return ok({ updated: rows[0].task });
      }
      case "pause_schedule":
      case "resume_schedule": {
        const rows = name === "pause_schedule"
          ? await tx<{ task: Json }[]>`select ${taskJson(tx)} as task from public.pause_task(${id!}::uuid) t`
          : await tx<{ task: Json }[]>`select ${taskJson(tx)} as task from public.resume_task(${id!}::uuid) t`;
        return ok({ [name === "pause_schedule" ? "paused" : "resumed"]: rows[0].task });
      }
      case "delete_schedule": {
        const rows = await tx<{ id: string; name: string }[]>`
          delete from public.agent_tasks t where t.id = ${id!}::uuid returning t.id, t.name`;
        if (rows.length === 0) return fail(`schedule ${id} not found`);
        return ok({ deleted: { id: rows[0].id, name: rows[0].name } });
      }
      case "run_schedule_now": {
        const [row] = await tx<{ execution_id: string }[]>`select public.run_task_now(${id!}::uuid) as execution_id`;
        return ok({ queued: { schedule_id: id!, execution_id: row.execution_id } });
      }
    }
  });
}

/** Run one scheduler tool; database refusals come back as `{error}` results. */
export async function runSchedulerTool(
  name: SchedulerTool,
  args: Record<string, unknown>,
  ctx: ToolContext,
): Promise<ToolOutcome> {
  try {
    return await execute(name, args, ctx);
  } catch (err) {
    const message = dbErrorMessage(err);
    if (message !== null) return fail(message);
    console.error(`tool ${name} failed:`, err instanceof Error ? err.message : err);
    return fail(`${name} failed unexpectedly; try again later`);
  }
}
