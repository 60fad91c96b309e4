// The scheduled turn's side of report_task_status: the system prompt that
// tells the agent which task it is running and how to report on it, and the
// report read back from a turn's tool calls. What a report does to the task
// (state merge, next run, completion) is the database's task lifecycle
// (scheduler.apply_task_report, record_outcome).

import type { TaskRow } from "../db.ts";
import { LIFECYCLE_STATE_KEYS, REPORT_TASK_STATUS } from "./definitions.ts";

/** The arguments of an accepted report_task_status call. */
export interface TaskReport {
  status: "continue" | "needs_input" | "complete";
  question?: string;
  state_update?: Record<string, unknown>;
  summary?: string;
  next_run_at?: string;
  final?: boolean;
}

/** The last accepted report among a turn's tool calls, or null. */
export function lastReport(calls: readonly { name: string; status: string; arguments: unknown }[]): TaskReport | null {
  for (let i = calls.length - 1; i >= 0; i--) {
    if (calls[i].name === REPORT_TASK_STATUS && calls[i].status === "ok") return calls[i].arguments as TaskReport;
  }
  return null;
}

function plural(n: number, unit: string): string {
  return `${n} ${unit}${n === 1 ? "" : "s"}`;
}

function everyInterval(seconds: number): string {
  for (const [unit, size] of [["day", 86400], ["hour", 3600], ["minute", 60]] as const) {
    if (seconds % size === 0) return `every ${plural(seconds / size, unit)}`;
  }
  return `every ${plural(seconds, "second")}`;
}

/** The task's schedule as a sentence fragment, e.g. "every 2 hours, until 2030-01-01T00:00:00Z". */
export function scheduleInWords(task: TaskRow): string {
  let words: string;
  switch (task.schedule_type) {
    case "cron":
      words = `on the cron schedule "${task.cron_expression}" (${task.timezone})`;
      break;
    case "interval":
      words = everyInterval(task.interval_seconds ?? 0);
      break;
    case "once":
      words = `once, at ${task.run_at}`;
      break;
    case "manual":
      words = "only when started by hand";
      break;
  }
  if (task.max_runs !== null) words += `, at most ${plural(task.max_runs, "run")}`;
  if (task.ends_at !== null) words += `, until ${task.ends_at}`;
  return words;
}

/**
 * The system prompt section of a scheduled turn (after the agent's own): the
 * task's name, run number, schedule in words, its system_addon, its state
 * and how to use report_task_status.
 */
export function scheduledTurnPrompt(task: TaskRow): string {
  const state = Object.fromEntries(Object.entries(task.state ?? {}).filter(([k]) => !LIFECYCLE_STATE_KEYS.has(k)));
  const why = task.trigger_type === "user_reply"
    ? "This run was started by the user's answer to your question (the latest user message before this one)."
    : `This is run ${task.run_count} of the task.`;
  const addon = task.system_addon?.trim() ? [`Instructions for this task: ${task.system_addon.trim()}`] : [];
  return [
    `You are running the scheduled task "${task.name}", which runs ${scheduleInWords(task)}.`,
    why,
    ...addon,
    `The task's state (kept from run to run): ${JSON.stringify(state)}`,
    `Do the task, then call ${REPORT_TASK_STATUS} once: status "continue" to carry on with the schedule ` +
    `(state_update: keys to keep for the next run; next_run_at: an earlier or later next run), ` +
    `"needs_input" with a question when you cannot go on without the user's answer (the task waits for it), ` +
    `or "complete" when the task's goal is reached (add final: true to stop a recurring task). ` +
    `Without the call the run counts as an ordinary successful run.`,
  ].join("\n");
}
