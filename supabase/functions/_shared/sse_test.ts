import assert from "node:assert/strict";
import { formatEvent, SseDecoder } from "./sse.ts";

Deno.test("formatEvent__one_named_event_with_one_json_data_line", () => {
  assert.equal(formatEvent("delta", { content: "a\nb" }), 'event: delta\ndata: {"content":"a\\nb"}\n\n');
});

Deno.test("SseDecoder__decodes_events_split_anywhere", () => {
  const stream = 'data: {"a":1}\n\n: keep-alive comment\n\nevent: done\ndata: x\ndata: y\n\ndata: [DONE]\n\n';
  for (let cut = 0; cut <= stream.length; cut++) {
    const decoder = new SseDecoder();
    const events = [...decoder.push(stream.slice(0, cut)), ...decoder.push(stream.slice(cut)), ...decoder.finish()];
    assert.deepEqual(events, [
      { event: "message", data: '{"a":1}' },
      { event: "done", data: "x\ny" },
      { event: "message", data: "[DONE]" },
    ], `cut at ${cut}`);
  }
});

Deno.test("SseDecoder__accepts_crlf_and_cr_line_endings", () => {
  const decoder = new SseDecoder();
  const events = [...decoder.push("data: one\r"), ...decoder.push("\n\r\ndata:two\r\r")];
  assert.deepEqual(events, [{ event: "message", data: "one" }, { event: "message", data: "two" }]);
});

Deno.test("SseDecoder__dispatches_an_unterminated_last_event_on_finish", () => {
  const decoder = new SseDecoder();
  assert.deepEqual(decoder.push("data: tail"), []);
  assert.deepEqual(decoder.finish(), [{ event: "message", data: "tail" }]);
});

Deno.test("formatEvent__round_trips_through_the_decoder", () => {
  const decoder = new SseDecoder();
  const payload = { content: "line1\nline2 \u2028 done" };
  const [event] = decoder.push(formatEvent("delta", payload));
  assert.equal(event.event, "delta");
  assert.deepEqual(JSON.parse(event.data), payload);
});
