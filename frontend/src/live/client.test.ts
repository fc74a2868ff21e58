import { describe, expect, it } from "vitest";

import { LiveClient, type LiveEvent, type SocketLike } from "./client";

class FakeSocket implements SocketLike {
  readyState = 1;
  sent: Record<string, unknown>[] = [];
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  send(data: string): void {
    this.sent.push(JSON.parse(data));
  }
  close(code = 1000): void {
    this.readyState = 3;
    this.onclose?.({ code });
  }
  server(msg: Record<string, unknown>): void {
    this.onmessage?.({ data: JSON.stringify(msg) });
  }
  hello(): void {
    this.server({ type: "hello", protocol: 1 });
  }
}

const S = "tenants/acme/federations/7";
const ev = (seq: number, prev: number): LiveEvent => ({
  type: "federation.site", stream: S, seq, prev, time: "t", payload: { n: seq },
});

function setup(opts: { random?: number } = {}) {
  const sockets: FakeSocket[] = [];
  const timers: { fn: () => void; ms: number }[] = [];
  const statuses: string[] = [];
  const clock = { t: 0, signedOut: 0 };
  const client = new LiveClient({
    now: () => clock.t,
    onSignedOut: () => { clock.signedOut += 1; },
    url: "ws://x/ws/v1/",
    socket: () => {
      const s = new FakeSocket();
      sockets.push(s);
      return s;
    },
    random: () => opts.random ?? 0.5,
    setTimer: (fn, ms) => timers.push({ fn, ms }),
    onStatus: (s) => statuses.push(s),
  });
  return { client, sockets, timers, statuses, clock };
}

describe("LiveClient", () => {
  it("subscribes after hello, delivers events once and in order", () => {
    const { client, sockets } = setup();
    const got: number[] = [];
    client.connect();
    client.subscribe(S, { onEvent: (e) => got.push(e.seq) }, 0);
    expect(sockets[0].sent).toEqual([]); // not before the server's hello
    sockets[0].hello();
    expect(sockets[0].sent).toEqual([{ op: "subscribe", id: S, stream: S, after: 0 }]);
    sockets[0].server({ type: "subscribed", id: S, stream: S, seq: 2 });
    for (const e of [ev(1, 0), ev(2, 1), ev(2, 1), ev(3, 2)]) sockets[0].server(e as never);
    expect(got).toEqual([1, 2, 3]);
    expect(client.lastSeq(S)).toBe(3);
  });

  it("reconnects with growing, jittered back-off and resumes after the last seq", () => {
    const { client, sockets, timers, statuses, clock } = setup({ random: 0.5 });
    const got: number[] = [];
    client.connect();
    client.subscribe(S, { onEvent: (e) => got.push(e.seq) }, 0);
    sockets[0].hello();
    sockets[0].server(ev(1, 0) as never);
    sockets[0].server(ev(2, 1) as never);
    sockets[0].close(1006); // the network dropped
    expect(statuses.at(-1)).toBe("reconnecting");
    expect(timers.map((t) => t.ms)).toEqual([500]);
    timers[0].fn();
    sockets[1].close(1006); // still down
    expect(timers.map((t) => t.ms)).toEqual([500, 1000]);
    timers[1].fn();
    sockets[2].hello();
    expect(sockets[2].sent).toEqual([{ op: "subscribe", id: S, stream: S, after: 2 }]);
    // The server replays from 3 (its prev counter restarts at 0): no duplicate, no drop.
    sockets[2].server(ev(3, 0) as never);
    sockets[2].server(ev(4, 3) as never);
    expect(got).toEqual([1, 2, 3, 4]);
    clock.t += 11_000;
    sockets[2].close(1006);
    expect(timers.at(-1)!.ms).toBe(500); // a connection that lasted reset the back-off
  });

  it("a server that accepts and soon closes is not hammered: the back-off keeps growing", () => {
    const { client, sockets, timers } = setup({ random: 0.5 });
    client.connect();
    for (let i = 0; i < 4; i++) {
      sockets[i].hello();
      sockets[i].close(1011);
      timers[i].fn();
    }
    expect(timers.map((t) => t.ms)).toEqual([500, 1000, 2000, 4000]);
  });

  it("unsubscribes a subscription the server has not confirmed yet; an older cleanup spares a newer one", () => {
    const { client, sockets } = setup();
    client.connect();
    sockets[0].hello();
    const first = client.subscribe(S, { onEvent: () => undefined }, 0);
    first(); // before its "subscribed": the server will hold it, so it is unsubscribed
    expect(sockets[0].sent.map((m) => m.op)).toEqual(["subscribe", "unsubscribe"]);
    const older = client.subscribe(S, { onEvent: () => undefined }, 0);
    const got: number[] = [];
    client.subscribe(S, { onEvent: (e) => got.push(e.seq) }, 0); // replaces the older one
    older(); // the older caller's cleanup
    sockets[0].server({ type: "subscribed", id: S, stream: S, seq: 0 });
    sockets[0].server(ev(1, 0) as never);
    expect(got).toEqual([1]);
  });

  it("only a subscribe's own error ends the stream", () => {
    const { client, sockets } = setup();
    const ends: string[] = [];
    client.connect();
    client.subscribe(S, { onEvent: () => undefined, onEnd: (r) => ends.push(r) }, 0);
    sockets[0].hello();
    sockets[0].server({ type: "error", id: 17, stream: S, code: "not_subscribed", message: "x" });
    sockets[0].server({ type: "error", id: S, stream: S, code: "already_subscribed", message: "x" });
    expect(ends).toEqual([]);
    sockets[0].server(ev(1, 0) as never);
    sockets[0].close(4401);
    expect(ends).toEqual(["signed_out"]);
  });

  it("caps the back-off and jitters it by ±50%", () => {
    const { client, sockets, timers } = setup({ random: 0.99 });
    client.connect();
    for (let i = 0; i < 12; i++) {
      sockets[i].close(1006);
      timers[i].fn();
    }
    expect(Math.max(...timers.map((t) => t.ms))).toBe(Math.round(30_000 * 1.49));
  });

  it("detects a gap by prev and fills it over REST before going on", async () => {
    const { client, sockets } = setup();
    const got: number[] = [];
    const asked: number[] = [];
    client.connect();
    client.subscribe(S, {
      onEvent: (e) => got.push(e.seq),
      resync: async (after) => {
        asked.push(after);
        return [ev(3, 2), ev(4, 3)];
      },
    }, 0);
    sockets[0].hello();
    sockets[0].server(ev(1, 0) as never);
    sockets[0].server(ev(2, 1) as never);
    sockets[0].server(ev(5, 4) as never); // 3 and 4 were dropped on the way
    sockets[0].server(ev(6, 5) as never); // arrives while the resync runs
    await new Promise((r) => setTimeout(r, 0));
    expect(asked).toEqual([2]);
    expect(got).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it("without a REST reader, a gap subscribes again from the last seq", () => {
    const { client, sockets } = setup();
    const got: number[] = [];
    client.connect();
    client.subscribe(S, { onEvent: (e) => got.push(e.seq) }, 0);
    sockets[0].hello();
    sockets[0].server(ev(1, 0) as never);
    sockets[0].server(ev(3, 2) as never);
    expect(sockets[0].sent.slice(1).map((m) => [m.op, m.after])).toEqual([["unsubscribe", undefined], ["subscribe", 1]]);
    sockets[0].server({ type: "unsubscribed", stream: S, reason: "requested" });
    sockets[0].server({ type: "subscribed", stream: S, seq: 3 });
    sockets[0].server(ev(2, 0) as never);
    sockets[0].server(ev(3, 2) as never);
    expect(got).toEqual([1, 2, 3]);
  });

  it("too far behind: the server ends the subscription; REST fills, then it subscribes again", async () => {
    const { client, sockets } = setup();
    const got: number[] = [];
    client.connect();
    client.subscribe(S, { onEvent: (e) => got.push(e.seq), resync: async () => [ev(3, 2), ev(4, 3)] }, 0);
    sockets[0].hello();
    sockets[0].server(ev(1, 0) as never);
    sockets[0].server(ev(2, 1) as never);
    sockets[0].server({ type: "unsubscribed", stream: S, reason: "resync", seq: 2 });
    await new Promise((r) => setTimeout(r, 0));
    expect(got).toEqual([1, 2, 3, 4]);
    expect(sockets[0].sent.at(-1)).toEqual({ op: "subscribe", id: S, stream: S, after: 4 });
  });

  it("an owner's skipped numbers are no gap: prev chains what was sent", () => {
    const { client, sockets } = setup();
    const got: number[] = [];
    client.connect();
    client.subscribe(S, { onEvent: (e) => got.push(e.seq), resync: async () => { throw new Error("no gap here"); } }, 0);
    sockets[0].hello();
    sockets[0].server(ev(1, 0) as never);
    sockets[0].server(ev(4, 1) as never);
    sockets[0].server(ev(9, 4) as never);
    expect(got).toEqual([1, 4, 9]);
  });

  it("from now on: no after, live events only", () => {
    const { client, sockets } = setup();
    const got: number[] = [];
    client.connect();
    client.subscribe(S, { onEvent: (e) => got.push(e.seq) });
    sockets[0].hello();
    expect(sockets[0].sent[0]).toEqual({ op: "subscribe", id: S, stream: S });
    sockets[0].server({ type: "subscribed", stream: S, seq: 40 });
    sockets[0].server(ev(41, 40) as never); // prev starts at the subscribed seq
    expect(got).toEqual([41]);
    sockets[0].close(1006);
  });

  it("refusals, revocations and sign-out end subscriptions and stop reconnecting", () => {
    const { client, sockets, timers, clock } = setup();
    const ends: string[] = [];
    client.connect();
    client.subscribe(S, { onEvent: () => undefined, onEnd: (r) => ends.push(`a:${r}`) }, 0);
    client.subscribe("tenants/acme/jobs/1", { onEvent: () => undefined, onEnd: (r) => ends.push(`b:${r}`) });
    client.subscribe("tenants/acme/jobs/2", { onEvent: () => undefined, onEnd: (r) => ends.push(`c:${r}`) });
    sockets[0].hello();
    sockets[0].server({ type: "error", id: "tenants/acme/jobs/1", stream: "tenants/acme/jobs/1", code: "not_found", message: "No such stream." });
    sockets[0].server({ type: "unsubscribed", stream: S, reason: "forbidden" });
    expect(ends).toEqual(["b:not_found", "a:forbidden"]);
    sockets[0].close(4401);
    expect(ends).toEqual(["b:not_found", "a:forbidden", "c:signed_out"]);
    expect(timers).toEqual([]);
    expect(client.status).toBe("closed");
    expect(clock.signedOut).toBe(1); // the app is told: it shows the sign-in page
  });
});
