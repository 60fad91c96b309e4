import assert from "node:assert/strict";
import type { TaskRow } from "../db.ts";
import { lastReport, scheduledTurnPrompt, scheduleInWords } from "./task_status.ts";

const task: TaskRow = {
  id: "d1000000-0000-0000-0000-000000000001",
  name: "Weekly goals",
  run_count: 3,
  schedule_type: "cron",
  cron_expression: "0 9 * * 1",
  interval_seconds: null,
  run_at: null,
  timezone: "Europe/Berlin",
  ends_at: null,
  max_runs: null,
  state: { step: 2, pending_question: "internal", complete_after_reply: true, budget_paused_until: "2030-01-01" },
  system_addon: null,
  trigger_type: "schedule",
};

Deno.test("scheduleInWords__names_each_schedule_type_and_its_end", () => {
  assert.equal(scheduleInWords(task), 'on the cron schedule "0 9 * * 1" (Europe/Berlin)');
  assert.equal(
    scheduleInWords({ ...task, schedule_type: "interval", interval_seconds: 7200, max_runs: 5 }),
    "every 2 hours, at most 5 runs",
  );
  assert.equal(scheduleInWords({ ...task, schedule_type: "interval", interval_seconds: 90 }), "every 90 seconds");
  assert.equal(
    scheduleInWords({ ...task, schedule_type: "once", run_at: "2030-01-01T09:00:00+00:00" }),
    "once, at 2030-01-01T09:00:00+00:00",
  );
  assert.equal(
    scheduleInWords({ ...task, schedule_type: "manual", ends_at: "2030-02-01T00:00:00+00:00" }),
    "only when started by hand, until 2030-02-01T00:00:00+00:00",
  );
});

Deno.test("scheduledTurnPrompt__states_name_run_schedule_state_and_the_tool", () => {
  const prompt = scheduledTurnPrompt(task);
  assert.match(prompt, /scheduled task "Weekly goals"/);
  assert.match(prompt, /This is run 3 of the task/);
  assert.match(prompt, /\{"step":2\}/); // the lifecycle's own keys are not shown
  assert.match(prompt, /report_task_status/);
  assert.match(scheduledTurnPrompt({ ...task, trigger_type: "user_reply" }), /started by the user's answer/);
  assert.doesNotMatch(prompt, /Instructions for this task/);
  assert.match(
    scheduledTurnPrompt({ ...task, system_addon: "  Answer in German. " }),
    /\nInstructions for this task: Answer in German\.\n/,
  );
});

Deno.test("lastReport__takes_the_last_accepted_report", () => {
  assert.equal(lastReport([]), null);
  const calls = [
    { name: "report_task_status", status: "ok", arguments: { status: "continue" } },
    { name: "list_schedules", status: "ok", arguments: {} },
    { name: "report_task_status", status: "error", arguments: { status: "bogus" } },
  ];
  assert.deepEqual(lastReport(calls), { status: "continue" });
});
