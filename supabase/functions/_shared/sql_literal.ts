// Typed SQL literals for the chat function's one-round-trip transactions.
//
// Why not bind parameters: with `prepare: false` (required behind Supabase's
// transaction pooler) postgres.js sends every parameterised statement in two
// round trips (describe, then execute) and cannot pipeline it, so a turn
// cost about thirteen round trips. A parameterless multi-statement query
// runs as one implicit transaction in one round trip. To keep that as safe
// as binding, values enter SQL only through this module:
//
// - `sqlText` is a tagged template that accepts nothing but `Literal`
//   values made by the typed constructors below; a raw string interpolated
//   by mistake throws instead of reaching the database.
// - Text is dollar-quoted with a random tag that does not occur in it, so no
//   character of the value (quote, backslash, `$`) can end the literal, and
//   the result does not depend on standard_conforming_strings.
// - UUIDs and integers are validated, JSON goes through JSON.stringify and
//   the text quoting, and NUL (which Postgres text cannot hold) is refused.

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A value already rendered as a SQL literal; only this module creates them. */
export class Literal {
  readonly #sql: string;
  private constructor(sql: string) {
    this.#sql = sql;
  }
  toSql(): string {
    return this.#sql;
  }
  /** @internal */
  static of(sql: string): Literal {
    return new Literal(sql);
  }
}

function randomTag(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return "q" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * A piece of constant SQL written in this codebase (a CTE, a column list),
 * for reuse inside `sqlText`. Never pass data here: data goes through the
 * typed constructors.
 */
export function fragment(sql: string): Literal {
  return Literal.of(sql);
}

/** A text literal: `$tag$…$tag$` with a tag absent from the value. */
export function text(value: string): Literal {
  if (typeof value !== "string") throw new TypeError("text() needs a string");
  if (value.includes("\u0000")) throw new RangeError("text values cannot contain NUL characters");
  let tag = randomTag();
  while (value.includes(`$${tag}$`)) tag = randomTag();
  return Literal.of(`$${tag}$${value}$${tag}$`);
}

/** A text literal, or NULL. */
export function textOrNull(value: string | null): Literal {
  return value === null ? Literal.of("null") : text(value);
}

/** A UUID literal (validated), or NULL. */
export function uuid(value: string | null): Literal {
  if (value === null) return Literal.of("null::uuid");
  if (typeof value !== "string" || !UUID_RE.test(value)) throw new RangeError("not a UUID");
  return Literal.of(`'${value.toLowerCase()}'::uuid`);
}

/** An integer literal (a safe integer). */
export function int(value: number): Literal {
  if (!Number.isSafeInteger(value)) throw new RangeError("not a safe integer");
  return Literal.of(`${value}::integer`);
}

/** A jsonb literal from any JSON-serialisable value (null gives SQL NULL). */
export function jsonb(value: unknown): Literal {
  if (value === null || value === undefined) return Literal.of("null::jsonb");
  return Literal.of(`${text(JSON.stringify(value)).toSql()}::jsonb`);
}

/** Build SQL from a template whose every interpolation is a Literal. */
export function sqlText(strings: TemplateStringsArray, ...values: Literal[]): string {
  let out = strings[0];
  values.forEach((value, i) => {
    if (!(value instanceof Literal)) throw new TypeError("only Literal values may be interpolated into SQL");
    out += value.toSql() + strings[i + 1];
  });
  return out;
}

/** Remove NUL characters from every string in a JSON-like value (model output may contain them). */
export function withoutNul<T>(value: T): T {
  if (typeof value === "string") return value.replaceAll("\u0000", "") as T;
  if (Array.isArray(value)) return value.map((v) => withoutNul(v)) as T;
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [withoutNul(k), withoutNul(v)])) as T;
  }
  return value;
}
