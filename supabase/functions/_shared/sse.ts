// Server-sent events: framing what we send, decoding what the model sends.
//
// Our stream uses named events (`event: delta`, `event: done`, ...) with one
// JSON document per `data:` line. The model's stream (OpenAI wire format) is
// unnamed `data: {...}` events ending with `data: [DONE]`; network chunks
// split events anywhere, so decoding is incremental.

const encoder = new TextEncoder();

/** One SSE event. JSON.stringify never emits raw newlines, so one data line suffices. */
export function formatEvent(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

export function encodeEvent(event: string, data: unknown): Uint8Array {
  return encoder.encode(formatEvent(event, data));
}

export interface SseEvent {
  event: string;
  data: string;
}

/**
 * Incremental SSE decoder (the WHATWG event-stream rules we need): lines end
 * with LF, CRLF or CR; `data:` lines of one event are joined with LF; a
 * blank line dispatches; comment lines (`:`) and unknown fields are ignored.
 */
export class SseDecoder {
  private buffer = "";
  private dataLines: string[] = [];
  private eventName = "";
  private pendingCR = false;

  /** Feed decoded text; returns the events completed by it. */
  push(text: string): SseEvent[] {
    if (this.pendingCR && text.startsWith("\n")) text = text.slice(1);
    this.pendingCR = false;
    this.buffer += text;
    const events: SseEvent[] = [];
    let start = 0;
    for (let i = 0; i < this.buffer.length; i++) {
      const ch = this.buffer[i];
      if (ch !== "\n" && ch !== "\r") continue;
      const line = this.buffer.slice(start, i);
      if (ch === "\r") {
        if (i + 1 < this.buffer.length) {
          if (this.buffer[i + 1] === "\n") i++;
        } else {
          this.pendingCR = true;
        }
      }
      start = i + 1;
      const event = this.line(line);
      if (event) events.push(event);
    }
    this.buffer = this.buffer.slice(start);
    return events;
  }

  /** End of input: an unterminated last event is dispatched if it has data. */
  finish(): SseEvent[] {
    const events: SseEvent[] = [];
    if (this.buffer !== "") {
      const event = this.line(this.buffer);
      if (event) events.push(event);
      this.buffer = "";
    }
    const last = this.line("");
    if (last) events.push(last);
    return events;
  }

  private line(line: string): SseEvent | null {
    if (line === "") {
      if (this.dataLines.length === 0) {
        this.eventName = "";
        return null;
      }
      const event = { event: this.eventName || "message", data: this.dataLines.join("\n") };
      this.dataLines = [];
      this.eventName = "";
      return event;
    }
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.dataLines.push(value);
    else if (field === "event") this.eventName = value;
    return null;
  }
}
