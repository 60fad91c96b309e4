// Server-sent events: framing what we send. Our stream uses named events
// (`event: delta`, `event: done`, ...) with one JSON document per `data:`
// line. The model's stream is decoded by the `openai` SDK (openai_sdk.ts).

const encoder = new TextEncoder();

/** One SSE event. JSON.stringify never emits raw newlines, so one data line suffices. */
export function formatEvent(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

export function encodeEvent(event: string, data: unknown): Uint8Array {
  return encoder.encode(formatEvent(event, data));
}
