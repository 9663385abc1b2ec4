/**
 * concord-sync/server: mints room tokens on an app's backend (Node), in
 * the format the relay verifies (docs/PROTOCOL.md section 7, "Tokens"):
 * `base64url(claims) "." base64url(Ed25519 signature)`, the signature over
 * `"concord-relay token v1" 00` followed by the claims.
 *
 * @example
 * ```ts
 * import { mintToken } from "concord-sync/server";
 * // The seed `concord-relay keygen` wrote to concord-relay.key (base64url).
 * const token = mintToken(process.env.CONCORD_KEY!, { room: "team-42", rights: "rw", ttlSeconds: 3600 });
 * ```
 * @module
 */
import { createPrivateKey, sign, type KeyObject } from "node:crypto";

/** What a token grants. */
export interface TokenOptions {
  /** The one room it grants. */
  room: string;
  /** `"r"` (read) or `"rw"` (read and write; the default). */
  rights?: "r" | "rw";
  /** Valid for this many seconds from now (default 3600). */
  ttlSeconds?: number;
  /** Or valid until this Unix time in seconds (overrides `ttlSeconds`). */
  expiresAt?: number;
  /** Only this replica id may use it (the 16 hex digits of `db.replicaId`, or a bigint). */
  replica?: string | bigint;
}

const DOMAIN = Buffer.from("concord-relay token v1\0", "ascii");
// PKCS#8 DER of an Ed25519 private key, up to the 32-byte seed (RFC 8410).
const PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");

/** An Ed25519 signing key from its 32-byte seed (bytes, or base64url text as in concord-relay.key). */
export function signingKey(seed: string | Uint8Array): KeyObject {
  const bytes = typeof seed === "string" ? Buffer.from(seed.trim(), "base64url") : Buffer.from(seed);
  if (bytes.length !== 32) {
    throw new TypeError(`an Ed25519 seed is 32 bytes, got ${bytes.length} (pass concord-relay.key's base64url text or the raw bytes)`);
  }
  return createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, bytes]), format: "der", type: "pkcs8" });
}

function varint(value: bigint, out: number[]): void {
  if (value < 0n || value >= 1n << 64n) throw new RangeError(`${value} does not fit in 64 bits`);
  do {
    let byte = Number(value & 0x7fn);
    value >>= 7n;
    if (value > 0n) byte |= 0x80;
    out.push(byte);
  } while (value > 0n);
}

/** The claims' bytes (postcard encoding). */
function encodeClaims(room: string, readWrite: boolean, expiresAt: bigint, replica: bigint | undefined): Buffer {
  const out: number[] = [];
  const roomBytes = Buffer.from(room, "utf8");
  varint(BigInt(roomBytes.length), out);
  out.push(...roomBytes);
  varint(readWrite ? 1n : 0n, out);
  varint(expiresAt, out);
  if (replica === undefined) {
    out.push(0);
  } else {
    out.push(1);
    varint(replica, out);
  }
  return Buffer.from(out);
}

/** Signs a token granting `options.room` with the key `seed` (see {@link signingKey}). */
export function mintToken(seed: string | Uint8Array | KeyObject, options: TokenOptions): string {
  const { room } = options;
  if (typeof room !== "string" || room.length === 0) throw new TypeError("room must be a non-empty string");
  const rights = options.rights ?? "rw";
  if (rights !== "r" && rights !== "rw") throw new TypeError(`rights must be "r" or "rw", got ${String(rights)}`);
  const expiresAt = BigInt(Math.floor(options.expiresAt ?? Date.now() / 1000 + (options.ttlSeconds ?? 3600)));
  const replica =
    options.replica === undefined
      ? undefined
      : typeof options.replica === "bigint"
        ? options.replica
        : BigInt(`0x${options.replica}`);
  const claims = encodeClaims(room, rights === "rw", expiresAt, replica);
  const key = typeof seed === "object" && "asymmetricKeyType" in seed ? seed : signingKey(seed as string | Uint8Array);
  const signature = sign(null, Buffer.concat([DOMAIN, claims]), key);
  return `${claims.toString("base64url")}.${signature.toString("base64url")}`;
}
