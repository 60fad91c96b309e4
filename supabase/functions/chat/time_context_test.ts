import assert from "node:assert/strict";
import { canonicalTimeZone, localTime, timeContext } from "./time_context.ts";

// 2026-12-01 18:03:59 UTC: a Tuesday; Berlin is on winter time (UTC+01:00)
const WINTER = new Date("2026-12-01T18:03:59.500Z");
// 2026-07-01 06:30 UTC: New York on summer time (UTC-04:00)
const SUMMER = new Date("2026-07-01T06:30:00Z");

Deno.test("canonicalTimeZone: IANA names in any case, nothing else", () => {
  assert.equal(canonicalTimeZone("Europe/Berlin"), "Europe/Berlin");
  assert.equal(canonicalTimeZone("america/new_york"), "America/New_York");
  assert.equal(canonicalTimeZone("UTC"), "UTC");
  assert.equal(canonicalTimeZone("Asia/Kolkata"), "Asia/Kolkata"); // ICU's alias is Asia/Calcutta
  for (const bad of ["", "Nowhere/Special", "../etc/passwd", "Europe/Berlin ", "+05:30", "x".repeat(65)]) {
    assert.equal(canonicalTimeZone(bad), null, bad);
  }
});

Deno.test("localTime: the wall clock of the zone, to the minute", () => {
  assert.equal(localTime(WINTER, "Europe/Berlin"), "Tuesday, 1 December 2026, 19:03");
  assert.equal(localTime(WINTER, "Asia/Kolkata"), "Tuesday, 1 December 2026, 23:33");
  assert.equal(localTime(WINTER, "Pacific/Auckland"), "Wednesday, 2 December 2026, 07:03");
  assert.equal(localTime(SUMMER, "America/New_York"), "Wednesday, 1 July 2026, 02:30");
});

Deno.test("timeContext: the user's zone with its offset of the day, and UTC", () => {
  const berlin = timeContext(WINTER, "Europe/Berlin", "user");
  assert.match(berlin, /^Current date and time: Tuesday, 1 December 2026, 19:03 in the user's time zone, /);
  assert.match(berlin, /Europe\/Berlin \(UTC\+01:00\); 2026-12-01T18:03Z in UTC\./);
  assert.match(berlin, /timezone "Europe\/Berlin"/);
  assert.match(timeContext(SUMMER, "America/New_York", "user"), /02:30 in the user's time zone, America\/New_York \(UTC-04:00\)/);
  assert.match(timeContext(WINTER, "Asia/Kolkata", "task"), /23:33 in the task's time zone, Asia\/Kolkata \(UTC\+05:30\)/);
});

Deno.test("timeContext: without a zone the time is UTC and the model is told to ask", () => {
  const unknown = timeContext(WINTER, null, "user");
  assert.equal(
    unknown,
    "Current date and time: Tuesday, 1 December 2026, 18:03 UTC (2026-12-01T18:03Z). The user's time zone is " +
      "not known: before scheduling at a time of day, ask for it (or say that the time is in UTC).",
  );
  assert.match(timeContext(WINTER, "UTC", "task"), /18:03 UTC \(2026-12-01T18:03Z\)\. The task's time zone is UTC\.$/);
});
