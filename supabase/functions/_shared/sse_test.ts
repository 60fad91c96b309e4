import assert from "node:assert/strict";
import { formatEvent } from "./sse.ts";

Deno.test("formatEvent__one_named_event_with_one_json_data_line", () => {
  assert.equal(formatEvent("delta", { content: "a\nb" }), 'event: delta\ndata: {"content":"a\\nb"}\n\n');
});
