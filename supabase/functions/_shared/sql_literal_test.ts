import assert from "node:assert/strict";
import { fragment, int, jsonb, Literal, sqlText, text, textOrNull, uuid, withoutNul } from "./sql_literal.ts";

/** What a dollar-quoted literal stands for, parsed the way Postgres does. */
function dollarValue(sql: string): string {
  const match = /^\$([A-Za-z_][A-Za-z0-9_]*)\$/.exec(sql);
  assert.ok(match, `not dollar-quoted: ${sql}`);
  const tag = `$${match[1]}$`;
  assert.ok(sql.endsWith(tag));
  const body = sql.slice(tag.length, sql.length - tag.length);
  assert.equal(body.includes(tag), false, "the tag must not occur inside the value");
  return body;
}

Deno.test("text__round_trips_hostile_values", () => {
  const hostile = [
    "",
    "plain",
    "it's",
    "'; drop table public.agents; --",
    "back\\slash \\' E'x'",
    "$$ dollar $$ $q$ $tag$",
    "multi\nline\r\n\ttabs",
    "\u{1F600} emoji and \u2028",
  ];
  for (const value of hostile) assert.equal(dollarValue(text(value).toSql()), value);
});

Deno.test("text__picks_a_tag_absent_from_the_value", () => {
  // whatever tag is drawn, the value cannot contain it
  for (let i = 0; i < 200; i++) {
    const sql = text(`$q${"0".repeat(12)}$ end`).toSql();
    dollarValue(sql);
  }
});

Deno.test("text__refuses_nul", () => {
  assert.throws(() => text("a\u0000b"), RangeError);
});

Deno.test("typed_literals__validate_their_input", () => {
  assert.equal(uuid("0D8F5A1E-1111-4111-8111-111111111111").toSql(), "'0d8f5a1e-1111-4111-8111-111111111111'::uuid");
  assert.equal(uuid(null).toSql(), "null::uuid");
  assert.throws(() => uuid("1' or '1'='1"), RangeError);
  assert.equal(int(42).toSql(), "42::integer");
  assert.throws(() => int(1.5), RangeError);
  assert.throws(() => int(Number.NaN), RangeError);
  assert.equal(textOrNull(null).toSql(), "null");
  assert.equal(jsonb(null).toSql(), "null::jsonb");
  const j = jsonb({ a: "it's", b: [1, null] }).toSql();
  assert.ok(j.endsWith("::jsonb"));
  assert.deepEqual(JSON.parse(dollarValue(j.slice(0, -"::jsonb".length))), { a: "it's", b: [1, null] });
});

Deno.test("sqlText__accepts_only_literals", () => {
  const id = "0d8f5a1e-1111-4111-8111-111111111111";
  assert.equal(sqlText`select ${uuid(id)}, ${int(3)}`, `select '${id}'::uuid, 3::integer`);
  assert.equal(sqlText`select ${fragment("now()")}`, "select now()");
  // a raw string slipping in (e.g. through an `any`) is refused, never inlined
  const raw = "1; drop table x" as unknown as Literal;
  assert.throws(() => sqlText`select ${raw}`, TypeError);
});

Deno.test("withoutNul__cleans_nested_values", () => {
  assert.deepEqual(withoutNul({ a: "x\u0000y", b: ["\u0000"], c: 1, d: null }), { a: "xy", b: [""], c: 1, d: null });
});
