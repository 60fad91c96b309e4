// Integration credentials, encrypted at rest under a key the database never sees.
//
// CHAT_INTEGRATIONS_KEYS is a JSON object of named keys, each 32 random bytes
// in base64: {"k2025": "...", "k2026": "..."}. The last key listed encrypts;
// every key listed decrypts, so a key is rotated by appending a new one,
// re-encrypting (`agent-tasks integrations reencrypt`), then dropping the old.
// Each ciphertext is stored with the id of its key, and is bound to its
// integration and owner by AES-GCM's additional data: a ciphertext copied
// into another user's row does not decrypt.

export class KeyRingError extends Error {}

const NONCE_BYTES = 12;
const KEY_ID = /^[A-Za-z0-9_.-]{1,64}$/;
/** The longest credential accepted, in characters. */
export const MAX_CREDENTIAL_CHARS = 8000;

export interface Sealed {
  keyId: string;
  /** base64 of nonce || ciphertext || tag */
  ciphertext: string;
}

export interface KeyRing {
  /** The key new ciphertexts are made with. */
  currentKeyId: string;
  keyIds: string[];
  seal(plaintext: string, context: BindingContext): Promise<Sealed>;
  open(sealed: Sealed, context: BindingContext): Promise<string>;
}

/** What a ciphertext is bound to. */
export interface BindingContext {
  integrationId: string;
  userId: string;
}

function b64decode(text: string): Uint8Array<ArrayBuffer> {
  const raw = atob(text);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

function b64encode(bytes: Uint8Array): string {
  let raw = "";
  for (const b of bytes) raw += String.fromCharCode(b);
  return btoa(raw);
}

function additionalData(ctx: BindingContext): Uint8Array<ArrayBuffer> {
  return new Uint8Array(new TextEncoder().encode(`user_integrations:${ctx.integrationId}:${ctx.userId}`));
}

/** Parse CHAT_INTEGRATIONS_KEYS; null when unset (integrations with credentials are then refused). */
export async function loadKeyRing(raw: string | undefined): Promise<KeyRing | null> {
  if (raw === undefined || raw.trim() === "") return null;
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw new KeyRingError("CHAT_INTEGRATIONS_KEYS must be a JSON object of key id to base64 key");
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new KeyRingError("CHAT_INTEGRATIONS_KEYS must be a JSON object of key id to base64 key");
  }
  const keys = new Map<string, CryptoKey>();
  for (const [id, value] of Object.entries(parsed as Record<string, unknown>)) {
    if (!KEY_ID.test(id)) throw new KeyRingError(`CHAT_INTEGRATIONS_KEYS: key id ${JSON.stringify(id)} is not [A-Za-z0-9_.-]{1,64}`);
    let bytes: Uint8Array<ArrayBuffer>;
    try {
      bytes = typeof value === "string" ? b64decode(value) : new Uint8Array();
    } catch {
      bytes = new Uint8Array();
    }
    if (bytes.length !== 32) throw new KeyRingError(`CHAT_INTEGRATIONS_KEYS: key ${id} must be 32 bytes in base64`);
    keys.set(id, await crypto.subtle.importKey("raw", bytes, "AES-GCM", false, ["encrypt", "decrypt"]));
  }
  if (keys.size === 0) throw new KeyRingError("CHAT_INTEGRATIONS_KEYS holds no key");
  const keyIds = [...keys.keys()];
  const currentKeyId = keyIds[keyIds.length - 1];
  return {
    currentKeyId,
    keyIds,
    async seal(plaintext, ctx) {
      const nonce = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
      const sealed = new Uint8Array(await crypto.subtle.encrypt(
        { name: "AES-GCM", iv: nonce, additionalData: additionalData(ctx) },
        keys.get(currentKeyId)!,
        new TextEncoder().encode(plaintext),
      ));
      const out = new Uint8Array(NONCE_BYTES + sealed.length);
      out.set(nonce);
      out.set(sealed, NONCE_BYTES);
      return { keyId: currentKeyId, ciphertext: b64encode(out) };
    },
    async open(sealed, ctx) {
      const key = keys.get(sealed.keyId);
      if (!key) throw new KeyRingError(`the credential was encrypted under key ${sealed.keyId}, which is not configured`);
      try {
        const bytes = b64decode(sealed.ciphertext);
        const plain = await crypto.subtle.decrypt(
          { name: "AES-GCM", iv: bytes.subarray(0, NONCE_BYTES), additionalData: additionalData(ctx) },
          key,
          bytes.subarray(NONCE_BYTES),
        );
        return new TextDecoder().decode(plain);
      } catch {
        throw new KeyRingError("the credential could not be decrypted");
      }
    },
  };
}
