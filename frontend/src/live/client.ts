// The client of the one websocket endpoint (/ws/v1/, docs/websocket.md).
//
// One socket, any number of subscriptions. Each subscription keeps the last `seq` it delivered:
// - an event at or below it is a duplicate (replay and live overlap) and is dropped;
// - an event whose `prev` is not it means something was missed: the subscription asks its
//   `resync` callback (REST `…/events/?after=`) for the missing events, delivers them, then goes on;
// - after a lost socket it reconnects with exponential back-off and jitter and subscribes again
//   with `after` = that number, so no chart point is duplicated or dropped.
// Close 4401 (signed out, key expired) and 4403 (access revoked) stop reconnecting: the app shows
// the sign-in or "no access" page instead.

export interface LiveEvent {
  type: string;
  stream: string;
  seq: number;
  prev: number;
  time: string;
  payload: Record<string, unknown>;
}

export type EndReason = "forbidden" | "not_found" | "bad_request" | "signed_out" | "error";

export interface Handlers {
  /** Each event once, in `seq` order. */
  onEvent: (event: LiveEvent) => void;
  /** The subscription ended for good (access lost, refused, or the socket's principal ended). */
  onEnd?: (reason: EndReason, message: string) => void;
  /** Missed events after `after` (REST), oldest first; without it a gap is resubscribed. */
  resync?: (after: number) => Promise<LiveEvent[]>;
}

export interface SocketLike {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export interface Options {
  url: string;
  /** Makes the socket (tests pass a fake); default: the browser's WebSocket. */
  socket?: (url: string) => SocketLike;
  /** Back-off: first delay and cap (ms); each retry doubles, with ±50% jitter. */
  minDelayMs?: number;
  maxDelayMs?: number;
  random?: () => number;
  setTimer?: (fn: () => void, ms: number) => unknown;
  now?: () => number;
  onStatus?: (status: Status) => void;
  /** The socket closed with 4401 (signed out, the key expired): the app shows the sign-in page. */
  onSignedOut?: () => void;
}

export type Status = "connecting" | "open" | "reconnecting" | "closed";

interface Sub {
  stream: string;
  handlers: Handlers;
  last: number; // the last seq delivered (0: none)
  sent: boolean; // a subscribe went out on the current socket (the server may hold it)
  active: boolean; // subscribed on the current socket
  resyncing: boolean;
  resubscribe: boolean; // the server ended it for a resync: subscribe again once caught up
  queued: LiveEvent[]; // events that arrived while a resync ran
}

const OPEN = 1;

export class LiveClient {
  private ws: SocketLike | null = null;
  private subs = new Map<string, Sub>();
  private attempt = 0;
  private stopped = false;
  private nextId = 1;
  private helloAt: number | null = null;
  status: Status = "closed";

  constructor(private readonly opts: Options) {}

  /** Open the socket (and keep it open until `close`). */
  connect(): void {
    this.stopped = false;
    this.open(this.attempt === 0 ? "connecting" : "reconnecting");
  }

  close(): void {
    this.stopped = true;
    this.ws?.close(1000);
    this.setStatus("closed");
  }

  /** Watch `stream` from `after` (the last seq the caller holds; omit it for "from now on"). */
  subscribe(stream: string, handlers: Handlers, after?: number): () => void {
    const old = this.subs.get(stream);
    if (old) this.drop(old); // one subscription per stream: the newest caller's
    const sub: Sub = {
      stream, handlers, last: after ?? -1, sent: false, active: false, resyncing: false, resubscribe: false, queued: [],
    };
    this.subs.set(stream, sub);
    this.sendSubscribe(sub);
    return () => {
      if (this.subs.get(stream) === sub) this.drop(sub); // an older caller's cleanup leaves a newer one alone
    };
  }

  unsubscribe(stream: string): void {
    const sub = this.subs.get(stream);
    if (sub) this.drop(sub);
  }

  private drop(sub: Sub): void {
    this.subs.delete(sub.stream);
    // Sent but not yet confirmed counts too: the server holds it once it reads the subscribe.
    if (sub.sent || sub.active) this.send({ op: "unsubscribe", id: this.nextId++, stream: sub.stream });
    sub.sent = sub.active = false;
  }

  /** The last seq delivered on `stream` (what a reconnect resumes after). */
  lastSeq(stream: string): number | undefined {
    const s = this.subs.get(stream);
    return s && s.last >= 0 ? s.last : undefined;
  }

  // --- the socket --------------------------------------------------------------------------------
  private open(status: Status): void {
    this.setStatus(status);
    const make = this.opts.socket ?? ((url: string) => new WebSocket(url) as unknown as SocketLike);
    const ws = make(this.opts.url);
    this.ws = ws;
    ws.onmessage = (ev) => this.onMessage(ws, ev.data);
    ws.onclose = (ev) => this.onClose(ws, ev.code);
    ws.onerror = () => undefined; // a close follows
    ws.onopen = () => undefined; // the server's hello says we are in
  }

  private onClose(ws: SocketLike, code: number): void {
    if (ws !== this.ws) return;
    this.ws = null;
    for (const sub of this.subs.values()) sub.active = sub.sent = false;
    if (code === 4401 || code === 4403) {
      const reason: EndReason = code === 4401 ? "signed_out" : "forbidden";
      const ended = [...this.subs.values()];
      this.subs.clear();
      this.stopped = true;
      this.setStatus("closed");
      for (const sub of ended) sub.handlers.onEnd?.(reason, `socket closed (${code})`);
      if (code === 4401) this.opts.onSignedOut?.();
      return;
    }
    // A connection that lasted resets the back-off; one closed soon after it opened does not (a
    // server that accepts and then refuses must not be hammered every half second).
    const now = (this.opts.now ?? Date.now)();
    if (this.helloAt !== null && now - this.helloAt > 10_000) this.attempt = 0;
    this.helloAt = null;
    if (this.stopped) return;
    this.setStatus("reconnecting");
    const min = this.opts.minDelayMs ?? 500;
    const max = this.opts.maxDelayMs ?? 30_000;
    const base = Math.min(max, min * 2 ** this.attempt);
    const jitter = 0.5 + (this.opts.random ?? Math.random)();
    this.attempt += 1;
    (this.opts.setTimer ?? setTimeout)(() => {
      if (!this.stopped) this.open("reconnecting");
    }, Math.round(base * jitter));
  }

  private setStatus(status: Status): void {
    this.status = status;
    this.opts.onStatus?.(status);
  }

  private send(msg: Record<string, unknown>): void {
    if (this.ws && this.ws.readyState === OPEN && this.status === "open") this.ws.send(JSON.stringify(msg));
  }

  private sendSubscribe(sub: Sub): void {
    if (!this.ws || this.status !== "open") return; // sent on the next hello
    const msg: Record<string, unknown> = { op: "subscribe", id: sub.stream, stream: sub.stream };
    if (sub.last >= 0) msg.after = sub.last;
    this.send(msg);
    sub.sent = true;
  }

  // --- messages ----------------------------------------------------------------------------------
  private onMessage(ws: SocketLike, data: unknown): void {
    if (ws !== this.ws || typeof data !== "string") return;
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(data) as Record<string, unknown>;
    } catch {
      return;
    }
    const type = String(msg.type ?? "");
    if (type === "hello") {
      this.helloAt = (this.opts.now ?? Date.now)();
      this.setStatus("open");
      for (const sub of this.subs.values()) this.sendSubscribe(sub);
      return;
    }
    const stream = typeof msg.stream === "string" ? msg.stream : undefined;
    const sub = stream ? this.subs.get(stream) : undefined;
    if (type === "subscribed" && sub) {
      sub.active = true;
      if (sub.last < 0) sub.last = Number(msg.seq); // "from now on": the stream's latest number
      return;
    }
    // An error answers one of our messages: only a subscribe's (its id is the stream) ends the stream.
    if (type === "error" && sub && msg.id === sub.stream) {
      if (msg.code === "already_subscribed") {
        sub.active = true; // the server holds it already (a retried subscribe)
        return;
      }
      this.subs.delete(sub.stream);
      const code = msg.code === "not_found" || msg.code === "forbidden" ? msg.code : "bad_request";
      sub.handlers.onEnd?.(code, String(msg.message ?? ""));
      return;
    }
    if (type === "unsubscribed" && sub && msg.reason === "resync") {
      // Too far behind for the server to replay: read the rest over REST, then subscribe again.
      sub.active = sub.sent = false;
      sub.resubscribe = true;
      void this.resync(sub, sub.last);
      return;
    }
    if (type === "unsubscribed" && sub && msg.reason !== "requested") {
      this.subs.delete(sub.stream);
      sub.handlers.onEnd?.("forbidden", "access ended");
      return;
    }
    if (sub && typeof msg.seq === "number" && typeof msg.prev === "number") {
      this.onEvent(sub, msg as unknown as LiveEvent);
    }
  }

  private onEvent(sub: Sub, ev: LiveEvent): void {
    if (sub.resyncing) {
      sub.queued.push(ev);
      return;
    }
    if (ev.seq <= sub.last) return; // a duplicate (replay and live overlap, or a resync's own)
    if (sub.last >= 0 && ev.prev !== sub.last && ev.prev > sub.last) {
      sub.queued.push(ev);
      void this.resync(sub, sub.last);
      return;
    }
    sub.last = ev.seq;
    sub.handlers.onEvent(ev);
  }

  private async resync(sub: Sub, after: number): Promise<void> {
    if (sub.resyncing) return;
    sub.resyncing = true;
    try {
      if (sub.handlers.resync) {
        const missed = await sub.handlers.resync(after);
        for (const ev of missed.sort((a, b) => a.seq - b.seq)) {
          if (ev.seq > sub.last) {
            sub.last = ev.seq;
            sub.handlers.onEvent(ev);
          }
        }
      } else if (!sub.resubscribe && this.subs.get(sub.stream) === sub) {
        // No REST reader: subscribe again from the last number held; the server's replay brings
        // what is queued here too, in order.
        sub.queued = [];
        this.send({ op: "unsubscribe", id: this.nextId++, stream: sub.stream });
        sub.active = false;
        this.sendSubscribe(sub);
      }
    } catch {
      // The REST read failed (a network blip): subscribe again from the last number held, and the
      // server replays what it can.
      if (sub.active || sub.sent) this.send({ op: "unsubscribe", id: this.nextId++, stream: sub.stream });
      sub.active = sub.sent = false;
      sub.resubscribe = true;
    } finally {
      if (sub.resubscribe && this.subs.get(sub.stream) === sub) {
        sub.resubscribe = false;
        sub.queued = []; // the new subscription replays from the last number held
        this.sendSubscribe(sub);
      }
      sub.resyncing = false;
      const queued = sub.queued.splice(0).sort((a, b) => a.seq - b.seq);
      // What came in meanwhile was committed before it was sent, so the REST read holds it unless
      // it came later still: deliver what is newer, once.
      for (const ev of queued) {
        if (ev.seq <= sub.last || !this.subs.has(sub.stream)) continue;
        sub.last = ev.seq;
        sub.handlers.onEvent(ev);
      }
    }
  }
}
