import { cleanup, fireEvent, render, screen, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";

import { siteState } from "./FederationLive";
import { SignIn } from "./SignIn";
import { ErrorPage } from "./Status";
import { ApiError } from "../api/http";

afterEach(() => {
  cleanup();
  vi.unstubAllGlobals();
});

function reply(status: number, body: unknown) {
  return Promise.resolve(new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } }));
}

describe("SignIn", () => {
  it("validates on the client before sending anything", async () => {
    const fetch = vi.fn();
    vi.stubGlobal("fetch", fetch);
    render(<SignIn onSignedIn={() => undefined} />);
    fireEvent.click(screen.getByRole("button", { name: "Sign in" }));
    expect(await screen.findByText("Enter your email address.")).toBeTruthy();
    expect(screen.getByText("Enter your password.")).toBeTruthy();
    expect(screen.getByLabelText("Email").getAttribute("aria-invalid")).toBe("true");
    expect(fetch).not.toHaveBeenCalled();
  });

  it("shows the server's message and field errors from the one error shape", async () => {
    vi.stubGlobal("fetch", vi.fn((url: string) =>
      url.endsWith("/auth/csrf/")
        ? reply(200, { csrf_token: "t" })
        : reply(400, { error: { code: "invalid", message: "Check the fields.", fields: { email: ["Unknown domain."] } } }),
    ));
    render(<SignIn onSignedIn={() => undefined} />);
    fireEvent.change(screen.getByLabelText("Email"), { target: { value: "a@b.example" } });
    fireEvent.change(screen.getByLabelText("Password"), { target: { value: "pw" } });
    fireEvent.click(screen.getByRole("button", { name: "Sign in" }));
    expect(await screen.findByText("Unknown domain.")).toBeTruthy();
    expect(screen.getByText("Check the fields.")).toBeTruthy();
  });

  it("signs in and hands over who the user is", async () => {
    const calls: string[] = [];
    vi.stubGlobal("fetch", vi.fn((url: string, init?: RequestInit) => {
      calls.push(`${init?.method ?? "GET"} ${url}`);
      if (url.endsWith("/auth/csrf/")) return reply(200, { csrf_token: "t" });
      if (url.endsWith("/auth/login/")) return reply(200, { id: 3 });
      return reply(200, { id: 3, email: "a@b.example" });
    }));
    const done = vi.fn();
    render(<SignIn onSignedIn={done} />);
    fireEvent.change(screen.getByLabelText("Email"), { target: { value: "a@b.example" } });
    fireEvent.change(screen.getByLabelText("Password"), { target: { value: "pw" } });
    fireEvent.click(screen.getByRole("button", { name: "Sign in" }));
    await waitFor(() => expect(done).toHaveBeenCalledWith({ id: 3, email: "a@b.example" }));
    expect(calls).toContain("POST /api/v1/auth/login/");
  });
});

describe("ErrorPage", () => {
  it("says not found or no access, never a blank screen", () => {
    render(<ErrorPage error={new ApiError(404, "not_found", "Not found.")} />);
    expect(screen.getByRole("heading", { name: "Not found" })).toBeTruthy();
    cleanup();
    render(<ErrorPage error={new ApiError(403, "forbidden", "No.")} />);
    expect(screen.getByRole("heading", { name: "No access" })).toBeTruthy();
  });
});

describe("siteState", () => {
  const ev = (seq: number, site: number | null, data: Record<string, unknown>, round = 1) => ({
    type: "federation.site", stream: "s", seq, prev: seq - 1, time: "t", payload: { round, site, data },
  });
  it("keeps the newest state of each site, with why it failed", () => {
    let s = siteState({}, ev(1, 4, { state: "training", attempt: 1 }));
    s = siteState(s, ev(2, 5, { state: "failed", error: { code: "site_failed", message: "ValueError: bad rows" } }));
    s = siteState(s, ev(3, 4, { state: "submitted", loss: 0.25 }));
    s = siteState(s, ev(4, 4, { approval: "approved" })); // not a training state: ignored
    expect(s[4]).toEqual({ state: "submitted", round: 1, detail: "", loss: 0.25, epsilon: undefined });
    expect(s[5].detail).toBe("ValueError: bad rows");
  });
});

describe("addPoint", () => {
  it("appends each metrics event at its step, a key first seen later padded with nulls", async () => {
    const { addPoint } = await import("./Jobs");
    let c = addPoint({ x: [], series: {} }, 1, { loss: 0.9 });
    c = addPoint(c, 2, { loss: 0.7, val_accuracy: 0.8, note: "x" });
    c = addPoint(c, 3, { loss: 0.5 });
    expect(c.x).toEqual([1, 2, 3]);
    expect(c.series).toEqual({ loss: [0.9, 0.7, 0.5], val_accuracy: [null, 0.8, null] });
  });
});

describe("auditQuery", () => {
  it("leaves out empty filters and adds the extras", async () => {
    const { auditQuery } = await import("./Audit");
    expect(auditQuery({ action_prefix: "grant.", outcome: "", actor_type: "user" }, { file_format: "csv" }))
      .toBe("action_prefix=grant.&actor_type=user&file_format=csv");
    expect(auditQuery({ action_prefix: "", outcome: "", actor_type: "" })).toBe("");
  });
});
