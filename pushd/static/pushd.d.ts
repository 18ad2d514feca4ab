// Type definitions for pushd.js, the browser client of the pushd daemon.
// Served at /pushd.d.ts. The same API is `window.pushd` (classic script
// /pushd.js) and the exports of the ES module /pushd.mjs.

export type Transport = "ws" | "sse" | "stream" | "longpoll" | "poll";
export type State = "connecting" | "open" | "reconnecting" | "closed";

/** A message as every transport delivers it (DESIGN: messages and cursors). */
export interface Message<T = unknown> {
  /** Opaque, increasing within a channel. Store it, send it back, never parse it. */
  id: string;
  channel: string;
  /** "message" unless the publisher named an event. */
  event: string;
  /** JSON value for application/json bodies, otherwise the text. */
  data: T;
  /** Milliseconds since the epoch, when the daemon stored the message. */
  time: number;
}

/** Some messages were lost (cursor too old, foreign or unknown); live from `cursor`. */
export interface Reset {
  channel: string;
  /** The channel's current position; null if it never had a message. */
  cursor: string | null;
}

export interface Status {
  state: State;
  transport: Transport;
}

export interface Backoff {
  /** Ceiling of the first delay, ms (default 1000); doubles per failed attempt. */
  initial?: number;
  /** Largest ceiling, ms (default 30000). Each delay is random in [0, ceiling). */
  max?: number;
  /** A connection open this long (ms, default 5000) resets the backoff. */
  stable?: number;
}

export interface Options<T = unknown> {
  /** Default "auto": ws, then sse, stream, longpoll, poll, falling back when one cannot open. */
  transport?: "auto" | Transport;
  /** Resume after this cursor. Without it the subscription starts live, with no history. */
  since?: string | null;
  onMessage?: (message: Message<T>) => void;
  onReset?: (reset: Reset) => void;
  onStatus?: (status: Status) => void;
  /** Milliseconds between polls for "poll" (default 2000). */
  pollInterval?: number;
  backoff?: Backoff;
  /** A connection not open after this many ms counts as failed (default 10000). */
  openTimeout?: number;
  /** A JWT for channels that need one (README "Security"): sent as
   *  `Authorization: Bearer` where the transport can (fetch), else as `?token=`
   *  (WebSocket, EventSource). */
  token?: string;
  /** Called before every connection (first, reconnects, and when the server
   *  says the token expired); its token replaces `token`. On a WebSocket an
   *  expired token is replaced on the open connection (an `auth` frame); the
   *  other transports reconnect with it. The cursor is kept, so nothing is
   *  lost across the renewal. */
  getToken?: () => string | Promise<string>;
}

export interface Stats {
  messages: number;
  /** Payload bytes received (decoded text, UTF-8 length). */
  bytes: number;
  /** Connections that were open and were replaced by a new one. */
  reconnects: number;
  resets: number;
  /** Connection attempts that never opened. */
  failures: number;
}

export interface Subscription {
  /** The id of the last message delivered, or the cursor of the last reset; null before either. */
  readonly cursor: string | null;
  /** The transport in use (or being tried). */
  readonly transport: Transport | null;
  readonly state: State;
  readonly stats: Stats;
  readonly channel: string;
  /** End the subscription; no callback runs afterwards. */
  close(): void;
  /** Drop the current connection and resume from the cursor, as a network failure would. */
  reconnect(): void;
}

/** Follow `channel` on the pushd daemon at `baseUrl` (e.g. "http://127.0.0.1:8080"; "" = this page's origin). */
export function subscribe<T = unknown>(
  baseUrl: string,
  channel: string,
  options?: Options<T>,
): Subscription;

export declare const version: string;
export declare const transports: Transport[];

declare const pushd: {
  subscribe: typeof subscribe;
  version: string;
  transports: Transport[];
};
export default pushd;

declare global {
  interface Window {
    /** Set by the classic script /pushd.js. */
    pushd: typeof pushd;
  }
}
