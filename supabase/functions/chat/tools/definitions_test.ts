import assert from "node:assert/strict";
import {
  REPORT_TASK_STATUS,
  reportError,
  REQUEST_USER_INPUT,
  SCHEDULER_TOOLS,
  STATE_UPDATE_MAX_CHARS,
  toolsFor,
  validateToolArgs,
} from "./definitions.ts";

const ALL = new Set<string>([...SCHEDULER_TOOLS, REQUEST_USER_INPUT, REPORT_TASK_STATUS]);

function errorOf(name: string, args: unknown): string {
  const result = validateToolArgs(name, JSON.stringify(args), ALL);
  assert.equal(result.ok, false, `expected ${JSON.stringify(args)} to be refused`);
  return result.ok ? "" : result.error;
}

Deno.test("toolsFor__offers_the_run_tools_only_when_acting_as_a_user", () => {
  const names = (actAs: boolean) => toolsFor({ actAs, enabled: null }).map((t) => t.function.name);
  assert.deepEqual(names(false), [...SCHEDULER_TOOLS]);
  assert.deepEqual(names(true), [...SCHEDULER_TOOLS, REQUEST_USER_INPUT, REPORT_TASK_STATUS]);
  assert.deepEqual(toolsFor({ actAs: true, enabled: [] }).map((t) => t.function.name), [
    REQUEST_USER_INPUT,
    REPORT_TASK_STATUS,
  ]);
  assert.deepEqual(toolsFor({ actAs: false, enabled: ["list_schedules"] }).map((t) => t.function.name), [
    "list_schedules",
  ]);
  assert.deepEqual(toolsFor({ actAs: false, enabled: [] }), []);
});

Deno.test("toolsFor__definitions_are_openai_function_tools", () => {
  for (const tool of toolsFor({ actAs: true, enabled: null })) {
    assert.equal(tool.type, "function");
    assert.equal(tool.function.parameters.type, "object");
    assert.ok(tool.function.description.length > 10);
  }
});

Deno.test("validateToolArgs__accepts_a_weekly_reminder_and_infers_cron", () => {
  const result = validateToolArgs(
    "create_schedule",
    JSON.stringify({ name: "Goals", prompt: "Review my goals", cron_expression: "0 9 * * 1", timezone: "Europe/Berlin" }),
    ALL,
  );
  assert.deepEqual(result, {
    ok: true,
    args: {
      name: "Goals",
      prompt: "Review my goals",
      cron_expression: "0 9 * * 1",
      timezone: "Europe/Berlin",
      schedule_type: "cron",
    },
  });
});

Deno.test("validateToolArgs__treats_null_as_not_given", () => {
  const result = validateToolArgs(
    "create_schedule",
    JSON.stringify({ name: "N", prompt: "P", interval_seconds: 3600, run_at: null, cron_expression: null }),
    ALL,
  );
  assert.ok(result.ok);
  assert.deepEqual(result.args, { name: "N", prompt: "P", interval_seconds: 3600, schedule_type: "interval" });
});

Deno.test("validateToolArgs__refuses_bad_arguments_with_readable_reasons", () => {
  assert.match(errorOf("create_schedule", { prompt: "P", cron_expression: "* * * * *" }), /arguments.name is required/);
  assert.match(errorOf("create_schedule", { name: "N", prompt: "P" }), /give the schedule/);
  assert.match(
    errorOf("create_schedule", { name: "N", prompt: "P", cron_expression: "0 9 * * 1", interval_seconds: 60 }),
    /only one of/,
  );
  assert.match(errorOf("create_schedule", { name: "N", prompt: "P", interval_seconds: "often" }), /must be an integer/);
  assert.match(errorOf("create_schedule", { name: "N", prompt: "P", interval_seconds: 0 }), />= 1/);
  assert.match(errorOf("create_schedule", { name: "N", prompt: "P", run_at: "tomorrow" }), /ISO 8601/);
  assert.match(errorOf("create_schedule", { name: "N", prompt: "P", run_at: "2030-01-01T09:00:00" }), /ISO 8601/);
  assert.match(errorOf("create_schedule", { name: "N", prompt: "P", cron_expression: "x", colour: "red" }), /not a known/);
  assert.match(
    errorOf("create_schedule", { name: "N", prompt: "P", schedule_type: "once", cron_expression: "0 9 * * 1" }),
    /does not take cron_expression/,
  );
  assert.match(errorOf("create_schedule", { name: "N", prompt: "P", schedule_type: "interval" }), /needs interval_seconds/);
  assert.match(
    errorOf("create_schedule", { name: "N", prompt: "P", cron_expression: "* * * * *", prompt_variables: { A: 1 } }),
    /prompt_variables.A must be a string/,
  );
  assert.match(errorOf("pause_schedule", { schedule_id: "abc" }), /must be a UUID/);
  assert.match(errorOf("update_schedule", { schedule_id: crypto.randomUUID() }), /at least one field/);
  assert.match(errorOf("request_user_input", { question: "" }), /must not be empty/);
  assert.match(errorOf("launch_rockets", {}), /unknown tool/);
  const notJson = validateToolArgs("list_schedules", "{oops", ALL);
  assert.deepEqual(notJson, { ok: false, error: "arguments are not valid JSON" });
});

Deno.test("validateToolArgs__refuses_tools_that_were_not_offered", () => {
  const offered = new Set<string>(SCHEDULER_TOOLS);
  const result = validateToolArgs("request_user_input", JSON.stringify({ question: "?" }), offered);
  assert.deepEqual(result, { ok: false, error: "unknown tool request_user_input" });
});

Deno.test("validateToolArgs__update_switching_schedule_type", () => {
  const id = crypto.randomUUID();
  const result = validateToolArgs("update_schedule", JSON.stringify({ schedule_id: id, interval_seconds: 60 }), ALL);
  assert.deepEqual(result, { ok: true, args: { schedule_id: id, interval_seconds: 60, schedule_type: "interval" } });
  const rename = validateToolArgs("update_schedule", JSON.stringify({ schedule_id: id, name: "New" }), ALL);
  assert.deepEqual(rename, { ok: true, args: { schedule_id: id, name: "New" } });
  const empty = validateToolArgs("list_schedules", "", ALL);
  assert.deepEqual(empty, { ok: true, args: {} });
});

Deno.test("validateToolArgs__report_task_status_accepts_each_status", () => {
  const later = new Date(Date.now() + 3600_000).toISOString();
  for (
    const args of [
      { status: "continue", state_update: { step: 2, notes: { a: [1, 2] } }, summary: "ok", next_run_at: later },
      { status: "needs_input", question: "Which day?" },
      { status: "complete", final: true, summary: "done" },
    ]
  ) {
    const result = validateToolArgs(REPORT_TASK_STATUS, JSON.stringify(args), ALL);
    assert.deepEqual(result, { ok: true, args });
  }
});

Deno.test("validateToolArgs__report_task_status_refuses_inconsistent_arguments", () => {
  assert.match(errorOf(REPORT_TASK_STATUS, { status: "done" }), /status must be one of continue, needs_input, complete/);
  assert.match(errorOf(REPORT_TASK_STATUS, { status: "needs_input" }), /needs_input needs a question/);
  assert.match(errorOf(REPORT_TASK_STATUS, { status: "continue", question: "?" }), /question is for needs_input/);
  assert.match(errorOf(REPORT_TASK_STATUS, { status: "continue", state_update: [1] }), /state_update must be an object/);
  assert.match(
    errorOf(REPORT_TASK_STATUS, { status: "complete", next_run_at: "2999-01-01T00:00:00Z" }),
    /next_run_at is for continue only/,
  );
  assert.match(
    errorOf(REPORT_TASK_STATUS, { status: "continue", next_run_at: "2001-01-01T00:00:00Z" }),
    /next_run_at must be in the future/,
  );
  assert.match(errorOf(REPORT_TASK_STATUS, { status: "continue", final: true }), /final is for complete only/);
});

Deno.test("reportError__bounds_the_state_update", () => {
  const big = { status: "continue", state_update: { blob: "x".repeat(STATE_UPDATE_MAX_CHARS) } };
  assert.match(reportError(big, Date.now()) ?? "", /state_update must be at most/);
  assert.equal(reportError({ status: "continue", state_update: { small: 1 } }, Date.now()), null);
});

Deno.test("reportError__refuses_the_keys_the_scheduler_keeps", () => {
  const report = { status: "continue", state_update: { step: 2, budget_paused_until: "2030-01-01T00:00:00Z" } };
  assert.match(reportError(report, Date.now()) ?? "", /may not set budget_paused_until: the scheduler keeps/);
  assert.match(
    reportError({ status: "needs_input", question: "?", state_update: { waiting_conversation_id: "x" } }, Date.now()) ?? "",
    /may not set waiting_conversation_id/,
  );
});
