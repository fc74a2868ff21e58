import { cleanup, fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";

import type { LiveEvent } from "../live/client";
import { Audit, auditFilters, auditQuery } from "./Audit";

// The activity stream, faked: the test delivers events to the page's handler.
const live = vi.hoisted(() => ({ onEvent: null as null | ((ev: LiveEvent) => void), streams: [] as string[] }));
vi.mock("../live/useLive", () => ({
  liveClient: () => ({
    subscribe: (stream: string, h: { onEvent: (ev: LiveEvent) => void }) => {
      live.streams.push(stream);
      live.onEvent = h.onEvent;
      return () => undefined;
    },
  }),
}));

afterEach(() => {
  cleanup();
  vi.unstubAllGlobals();
  live.onEvent = null;
  live.streams = [];
});

function reply(status: number, body: unknown) {
  return Promise.resolve(new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } }));
}
const event = (seq: number, action = "dataset.created", created_at = "2026-12-07T10:00:00Z") => ({
  seq, created_at, actor_type: "user", actor_label: "owner@acme.example", action, target_type: "datasets.dataset",
  target_id: String(seq), outcome: "success", details: {},
});
/** A fake list API: `pages` answers each path (after /api/v1/); every GET is recorded. */
function server(pages: (path: string) => Promise<Response>) {
  const calls: string[] = [];
  vi.stubGlobal("fetch", vi.fn((url: string) => {
    calls.push(url);
    return pages(url.replace(/^\/api\/v1\//, ""));
  }));
  return calls;
}

describe("auditFilters", () => {
  it("turns the form's local times into the API's since and until, checked first", () => {
    const base = { action_prefix: " grant. ", outcome: "", actor_type: "" };
    const ok = auditFilters({ ...base, from: "2026-12-01T09:00", to: "2026-12-02T09:00" });
    expect(ok.errors).toEqual({});
    expect(ok.filters).toEqual({ action_prefix: "grant.", outcome: "", actor_type: "",
      since: new Date("2026-12-01T09:00").toISOString(), until: new Date("2026-12-02T09:00").toISOString() });
    expect(auditQuery(ok.filters!)).toContain("since=");
    expect(auditFilters({ ...base, from: "", to: "" }).filters).toEqual({ action_prefix: "grant.", outcome: "", actor_type: "" });
    expect(auditFilters({ ...base, from: "2026-12-02T09:00", to: "2026-12-01T09:00" }).errors)
      .toEqual({ until: ["The end must be after the start."] });
    expect(auditFilters({ ...base, from: "yesterday", to: "" }).errors.since).toBeTruthy();
  });
});

describe("Audit", () => {
  it("pages past the newest 100 with the API's cursor, one page per click", async () => {
    const first = Array.from({ length: 100 }, (_, i) => event(250 - i));
    const calls = server((path) => {
      if (path === "tenants/acme/audit-events/?page_size=100")
        return reply(200, { results: first, next: "http://testserver/api/v1/tenants/acme/audit-events/?cursor=c1&page_size=100", previous: null });
      if (path === "tenants/acme/audit-events/?cursor=c1&page_size=100")
        return reply(200, { results: [event(150), event(149, "grant.created")], next: null, previous: "x" });
      return reply(404, { error: { code: "not_found", message: "Not found." } });
    });
    render(<Audit slug="acme" />);
    const table = await screen.findByTestId("audit-events");
    expect(table.querySelectorAll("tbody tr")).toHaveLength(100);
    expect(screen.getByTestId("audit-paging").textContent).toContain("100 events shown");
    fireEvent.click(screen.getByRole("button", { name: "Load older events (100 more)" }));
    expect(await screen.findByText("grant.created")).toBeTruthy();
    expect(table.querySelectorAll("tbody tr")).toHaveLength(102);
    expect(calls).toEqual(["/api/v1/tenants/acme/audit-events/?page_size=100", "/api/v1/tenants/acme/audit-events/?cursor=c1&page_size=100"]);
    expect(screen.getByTestId("audit-paging").textContent).toContain("No older events match.");
    expect(screen.queryByRole("button", { name: /Load older events/ })).toBeNull();

    // A live event is prepended (once, even if it comes twice); the older pages stay.
    live.onEvent?.({ type: "audit.event", stream: "s", seq: 251, prev: 250, time: "2026-12-07T11:00:00Z",
      payload: { actor_type: "user", actor_label: "x", action: "model.downloaded", target_type: null, target_id: null, outcome: "success" } });
    live.onEvent?.({ type: "audit.event", stream: "s", seq: 251, prev: 250, time: "2026-12-07T11:00:00Z",
      payload: { actor_type: "user", actor_label: "x", action: "model.downloaded", target_type: null, target_id: null, outcome: "success" } });
    await waitFor(() => expect(table.querySelectorAll("tbody tr")).toHaveLength(103));
    expect(within(table.querySelectorAll("tbody tr")[0] as HTMLElement).getByText("model.downloaded")).toBeTruthy();
  });

  it("filters by a time range: checked on the client, sent as since and until, and the server's field error shown", async () => {
    const calls = server((path) => {
      if (path.includes("since=")) {
        return path.includes("until=")
          ? reply(200, { results: [], next: null })
          : reply(400, { error: { code: "validation_error", message: "The request is invalid; see fields.",
            fields: { since: ["Datetime has wrong format."] } } });
      }
      return reply(200, { results: [event(3)], next: null });
    });
    render(<Audit slug="acme" />);
    await screen.findByTestId("audit-events");
    expect(screen.getByTestId("audit-paging").textContent).toContain("No older events match.");

    // To before From: refused before anything is sent.
    fireEvent.change(screen.getByLabelText("From"), { target: { value: "2026-12-02T09:00" } });
    fireEvent.change(screen.getByLabelText("To"), { target: { value: "2026-12-01T09:00" } });
    fireEvent.click(screen.getByRole("button", { name: "Filter" }));
    expect(await screen.findByText("The end must be after the start.")).toBeTruthy();
    expect(screen.getByLabelText("To").getAttribute("aria-describedby")).toBe("a-time-help audit-error-until");
    expect(calls).toHaveLength(1);

    // Only From: this fake server refuses it, with a field error shown under From.
    fireEvent.change(screen.getByLabelText("To"), { target: { value: "" } });
    fireEvent.click(screen.getByRole("button", { name: "Filter" }));
    expect(await screen.findByText("Datetime has wrong format.")).toBeTruthy();
    expect(screen.getByText("The request is invalid; see fields.")).toBeTruthy();
    expect(screen.getByLabelText("From").getAttribute("aria-describedby")).toBe("a-time-help audit-error-since");
    expect(screen.getByLabelText("From").getAttribute("aria-invalid")).toBe("true");
    expect(screen.queryByText("No events match.")).toBeNull();

    // Both: the exact request, and the empty state.
    fireEvent.change(screen.getByLabelText("To"), { target: { value: "2026-12-03T09:00" } });
    fireEvent.click(screen.getByRole("button", { name: "Filter" }));
    expect(await screen.findByText("No events match.")).toBeTruthy();
    const since = new Date("2026-12-02T09:00").toISOString();
    const until = new Date("2026-12-03T09:00").toISOString();
    expect(calls.at(-1)).toBe(`/api/v1/tenants/acme/audit-events/?since=${encodeURIComponent(since)}&until=${encodeURIComponent(until)}&page_size=100`);
    expect(screen.queryByText("Datetime has wrong format.")).toBeNull();
    expect(screen.getByRole("link", { name: "Export CSV" }).getAttribute("href"))
      .toBe(`/api/v1/tenants/acme/audit-events/export/?since=${encodeURIComponent(since)}&until=${encodeURIComponent(until)}&file_format=csv`);

    // A live event after the range is not shown.
    live.onEvent?.({ type: "audit.event", stream: "s", seq: 9, prev: 8, time: "2026-12-07T11:00:00Z",
      payload: { actor_type: "user", actor_label: "x", action: "model.downloaded", target_type: null, target_id: null, outcome: "success" } });
    await new Promise((r) => setTimeout(r, 20));
    expect(screen.queryByText("model.downloaded")).toBeNull();
  });

  it("says why older events cannot load, and keeps the button to try again", async () => {
    let fail = true;
    server((path) => path.includes("cursor=")
      ? (fail ? reply(500, { error: { code: "server_error", message: "Something failed (ref r1)." } }) : reply(200, { results: [event(1, "grant.revoked")], next: null }))
      : reply(200, { results: [event(2)], next: "/api/v1/tenants/acme/audit-events/?cursor=c2&page_size=100" }));
    render(<Audit slug="acme" />);
    fireEvent.click(await screen.findByRole("button", { name: "Load older events (100 more)" }));
    expect(await screen.findByText("The older events cannot load: Something failed (ref r1).")).toBeTruthy();
    expect(screen.getByTestId("audit-events").querySelectorAll("tbody tr")).toHaveLength(1);
    fail = false;
    fireEvent.click(screen.getByRole("button", { name: "Load older events (100 more)" }));
    expect(await screen.findByText("grant.revoked")).toBeTruthy();
    expect(screen.queryByText(/cannot load/)).toBeNull();
  });
});
