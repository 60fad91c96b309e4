// One error shape for every refusal and failure of the chat function.
//
// Callers (the frontend and the Python worker) branch on `code` and on
// `retryable`, never on the message, so both are part of the contract
// documented in docs/chat/api.md. Messages never carry stack traces.

export interface ErrorPayload {
  code: string;
  message: string;
  retryable: boolean;
  field?: string;
}

export interface ErrorBody {
  error: ErrorPayload;
}

export interface ChatErrorOptions {
  retryable?: boolean;
  field?: string;
  headers?: Record<string, string>;
}

/** A refusal or failure that maps to one HTTP status and one error code. */
export class ChatError extends Error {
  readonly status: number;
  readonly code: string;
  readonly retryable: boolean;
  readonly field?: string;
  readonly headers: Record<string, string>;

  constructor(status: number, code: string, message: string, options: ChatErrorOptions = {}) {
    super(message);
    this.name = "ChatError";
    this.status = status;
    this.code = code;
    this.retryable = options.retryable ?? false;
    this.field = options.field;
    this.headers = options.headers ?? {};
  }

  toBody(): ErrorBody {
    const error: ErrorPayload = { code: this.code, message: this.message, retryable: this.retryable };
    if (this.field !== undefined) error.field = this.field;
    return { error };
  }
}

/** The body of an unexpected failure: nothing about its cause leaks to the caller. */
export function internalError(): ChatError {
  return new ChatError(500, "internal_error", "internal error", { retryable: true });
}

/** Convenience constructor for 400 invalid_body naming the offending field. */
export function invalidBody(field: string, message: string): ChatError {
  return new ChatError(400, "invalid_body", message, { field });
}
