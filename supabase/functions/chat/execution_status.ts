// The statuses of public.agent_task_executions, as its CHECK constraint lists
// them (tests/integration/test_execution_status.py compares the two).

/** Statuses after which nobody waits for a reply (finished_at is set exactly for these). */
export const FINISHED_EXECUTION_STATUSES = [
  "succeeded",
  "failed",
  "timed_out",
  "needs_input",
  "cancelled",
  "skipped",
] as const;

export const EXECUTION_STATUSES = ["queued", "running", ...FINISHED_EXECUTION_STATUSES] as const;

export type ExecutionStatus = typeof EXECUTION_STATUSES[number];

/** Is this (database-given) status one after which the run is over? */
export function isFinished(status: string): boolean {
  return (FINISHED_EXECUTION_STATUSES as readonly string[]).includes(status);
}
