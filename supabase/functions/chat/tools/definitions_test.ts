import assert from "node:assert/strict";
import { REQUEST_USER_INPUT, SCHEDULER_TOOLS, toolsFor, validateToolArgs } from "./definitions.ts";

const ALL = new Set<string>([...SCHEDULER_TOOLS, REQUEST_USER_INPUT]);

function errorOf(name: string, args: unknown): string {
  const result = validateToolArgs(name, JSON.stringify(args), ALL);
  assert.equal(result.ok, false, `expected ${JSON.stringify(args)} to be refused`);
  return result.ok ? "" : result.error;
}

Deno.test("toolsFor__offers_request_user_input_only_when_acting_as_a_user", () => {
  const names = (actAs: boolean) => toolsFor({ actAs, enabled: null }).map((t) => t.function.name);
  assert.deepEqual(names(false), [...SCHEDULER_TOOLS]);
  assert.deepEqual(names(true), [...SCHEDULER_TOOLS, REQUEST_USER_INPUT]);
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
