// The turn's sense of time: the last section of every turn's system prompt
// says what time it is, in UTC and in the time zone that the user's words are
// in (the zone the client sent with a user's turn, the task's zone on a
// scheduled run). Without it a model cannot resolve "tomorrow at 9" or
// "every Monday morning", and a schedule it creates lands in UTC.
//
// Last in the prompt, to the minute: the agent's prompt, the task section and
// the tools before it stay one stable prefix that a provider's prompt cache
// can reuse from turn to turn.

/** The longest IANA zone name is 32 characters; room for future ones. */
export const MAX_TIME_ZONE_CHARS = 64;

const ZONE_RE = /^[A-Za-z][A-Za-z0-9_+\-\/]*$/;

/**
 * `name` as an IANA zone name in its usual case ("europe/berlin" ->
 * "Europe/Berlin"), or null when it is not a time zone this runtime knows.
 * A name ICU files under an older alias keeps the caller's spelling
 * ("Asia/Kolkata" stays, though ICU answers "Asia/Calcutta").
 */
export function canonicalTimeZone(name: string): string | null {
  if (name.length === 0 || name.length > MAX_TIME_ZONE_CHARS || !ZONE_RE.test(name)) return null;
  let resolved: string;
  try {
    resolved = new Intl.DateTimeFormat("en-GB", { timeZone: name }).resolvedOptions().timeZone;
  } catch {
    return null;
  }
  return resolved.toLowerCase() === name.toLowerCase() ? resolved : name;
}

/** Whose time zone the prompt names. */
export type ZoneSource = "user" | "task";

function parts(now: Date, timeZone: string): Record<string, string> {
  const format = new Intl.DateTimeFormat("en-GB", {
    timeZone,
    weekday: "long",
    day: "numeric",
    month: "long",
    year: "numeric",
    hour: "2-digit",
    minute: "2-digit",
    hourCycle: "h23",
    timeZoneName: "longOffset",
  });
  return Object.fromEntries(format.formatToParts(now).map((p) => [p.type, p.value]));
}

/** "GMT+05:30" / "GMT" (Intl's longOffset) as "UTC+05:30" / "UTC+00:00". */
function utcOffset(gmt: string): string {
  return gmt === "GMT" ? "UTC+00:00" : gmt.replace(/^GMT/, "UTC");
}

/** "Tuesday, 1 December 2026, 19:03" in `timeZone`. */
export function localTime(now: Date, timeZone: string): string {
  const p = parts(now, timeZone);
  return `${p.weekday}, ${p.day} ${p.month} ${p.year}, ${p.hour}:${p.minute}`;
}

/**
 * The system prompt's time section. `zone` is a canonical IANA name
 * (canonicalTimeZone) or null when the client did not say; a scheduled run
 * always has its task's zone.
 */
export function timeContext(now: Date, zone: string | null, source: ZoneSource): string {
  const utc = `${now.toISOString().slice(0, 16)}Z`;
  if (zone === null || zone === "UTC" || zone === "Etc/UTC") {
    const known = zone !== null;
    const whose = source === "task" ? "The task's time zone is UTC." : known
      ? "The user's time zone is UTC."
      : "The user's time zone is not known: before scheduling at a time of day, ask for it " +
        "(or say that the time is in UTC).";
    return `Current date and time: ${localTime(now, "UTC")} UTC (${utc}). ${whose}`;
  }
  const offset = utcOffset(parts(now, zone).timeZoneName ?? "GMT");
  const whose = source === "task" ? "the task's time zone" : "the user's time zone";
  return `Current date and time: ${localTime(now, zone)} in ${whose}, ${zone} (${offset}); ${utc} in UTC. ` +
    `Dates and times the user mentions are in ${zone} unless they say otherwise ` +
    `(a schedule for them: timezone "${zone}", and run_at with its UTC offset).`;
}
