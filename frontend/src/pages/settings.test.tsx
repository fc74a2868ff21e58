import { cleanup, fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import { afterEach, describe, expect, it, vi } from "vitest";

import { AcceptInvitation, checkKey, Settings } from "./Settings";

afterEach(() => {
  cleanup();
  vi.unstubAllGlobals();
});

function reply(status: number, body: unknown) {
  return Promise.resolve(new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } }));
}

const members = { results: [{ id: 1, email: "owner@acme.example", full_name: "Olive Owner", role: "owner" }], next: null };
const pendingInv = { id: 5, email: "new@acme.example", role: "analyst", status: "pending", created_at: "2026-12-01T10:00:00Z",
  expires_at: "2026-12-08T10:00:00Z", accepted_at: null, revoked_at: null };
const acceptedInv = { ...pendingInv, id: 4, email: "old@acme.example", status: "accepted", accepted_at: "2026-12-02T10:00:00Z" };
const activeKey = { id: 2, name: "ci", prefix: "abcd1234", scopes: ["read"], status: "active", created_at: "2026-12-01T10:00:00Z",
  expires_at: "2027-01-01T00:00:00Z", last_used_at: null, revoked_at: null, created_by: "owner@acme.example" };

type Handler = (body: Record<string, unknown>) => Promise<Response>;
/** A fake API: the three lists, and the POST and DELETE handlers a test gives. Every request is recorded. */
function server(opts: { invitations?: () => unknown; keys?: unknown; post?: Record<string, Handler>; del?: Record<string, () => Promise<Response>> } = {}) {
  const calls: string[] = [];
  const bodies: Record<string, unknown>[] = [];
  vi.stubGlobal("fetch", vi.fn((url: string, init?: RequestInit) => {
    const method = init?.method ?? "GET";
    calls.push(`${method} ${url}`);
    if (url.endsWith("/auth/csrf/")) return reply(200, { csrf_token: "t" });
    const path = url.replace(/^\/api\/v1\//, "").replace(/\?.*$/, "");
    if (method === "POST") {
      const body = JSON.parse(String(init?.body)) as Record<string, unknown>;
      bodies.push(body);
      const h = opts.post?.[path];
      return h ? h(body) : reply(404, { error: { code: "not_found", message: "Not found." } });
    }
    if (method === "DELETE") return opts.del?.[path]?.() ?? reply(404, { error: { code: "not_found", message: "Not found." } });
    if (path === "tenants/acme/members/") return reply(200, members);
    if (path === "tenants/acme/api-keys/") return reply(200, opts.keys ?? { results: [], next: null });
    if (path === "tenants/acme/invitations/") return reply(200, opts.invitations?.() ?? { results: [], next: null });
    return reply(404, { error: { code: "not_found", message: "Not found." } });
  }));
  return { calls, bodies };
}

describe("Settings: invitations", () => {
  it("lists pending invitations, validates, shows the server's field error, shows the token once, and revokes", async () => {
    let list = [pendingInv, acceptedInv];
    const { calls, bodies } = server({
      invitations: () => ({ results: list, next: null }),
      post: {
        "tenants/acme/invitations/": (body) => body.email === "taken@acme.example"
          ? reply(400, { error: { code: "validation_error", message: "The request is invalid; see fields.", fields: { email: ["Enter a valid email address."] } } })
          : reply(201, { ...pendingInv, id: 6, email: body.email, role: body.role, token: "inv_secret123" }),
      },
      del: { "tenants/acme/invitations/5/": () => { list = [acceptedInv, { ...pendingInv, status: "revoked" }]; return reply(200, { ...pendingInv, status: "revoked" }); } },
    });
    render(<Settings slug="acme" role="owner" />);
    const table = await screen.findByTestId("invitations");
    expect(within(table).getByText("new@acme.example")).toBeTruthy();
    expect(within(table).queryByText("old@acme.example")).toBeNull(); // accepted: under "Earlier invitations"
    expect(within(screen.getByTestId("earlier-invitations")).getByText("accepted")).toBeTruthy();
    expect(calls).toContain("GET /api/v1/tenants/acme/invitations/?page_size=200");
    expect((screen.getByLabelText("Invited role") as HTMLSelectElement).options.length).toBe(5); // an owner may invite an owner

    // Checked on the client first: nothing is sent.
    fireEvent.change(screen.getByLabelText("Valid for (days)"), { target: { value: "40" } });
    fireEvent.click(screen.getByRole("button", { name: "Invite" }));
    expect(await screen.findByText("Enter the e-mail address to invite.")).toBeTruthy();
    expect(screen.getByText("A whole number of days from 1 to 30.")).toBeTruthy();
    expect(bodies).toHaveLength(0);

    // The server's field error, under its field.
    fireEvent.change(screen.getByLabelText("Invite (e-mail)"), { target: { value: "taken@acme.example" } });
    fireEvent.change(screen.getByLabelText("Valid for (days)"), { target: { value: "14" } });
    fireEvent.change(screen.getByLabelText("Invited role"), { target: { value: "admin" } });
    fireEvent.click(screen.getByRole("button", { name: "Invite" }));
    expect(await screen.findByText("Enter a valid email address.")).toBeTruthy();
    expect(screen.getByText("The request is invalid; see fields.")).toBeTruthy();
    const email = screen.getByLabelText("Invite (e-mail)");
    expect(email.getAttribute("aria-invalid")).toBe("true");
    expect(email.getAttribute("aria-describedby")).toBe("invite-error-email");
    expect(document.getElementById("invite-error-email")?.textContent).toBe("Enter a valid email address.");

    // Created: the token is shown once.
    fireEvent.change(email, { target: { value: "Ann@Acme.example " } });
    fireEvent.click(screen.getByRole("button", { name: "Invite" }));
    expect((await screen.findByTestId("new-invitation")).textContent).toContain("inv_secret123");
    expect(bodies[1]).toEqual({ email: "Ann@Acme.example", role: "admin", ttl_days: 14 });
    expect(screen.queryByText("Enter a valid email address.")).toBeNull();

    // Revoked: the list is read again; none is pending now (the empty state), and the token is gone.
    fireEvent.click(screen.getByRole("button", { name: "Revoke the invitation to new@acme.example" }));
    expect(await screen.findByText("No pending invitations.")).toBeTruthy();
    expect(calls).toContain("DELETE /api/v1/tenants/acme/invitations/5/");
    expect(screen.queryByTestId("new-invitation")).toBeNull();
    expect(screen.getByText(/Earlier invitations \(2\)/)).toBeTruthy();
  });

  it("shows the server's refusal of a revoke; an admin is not offered the owner role", async () => {
    server({
      invitations: () => ({ results: [pendingInv], next: null }),
      del: { "tenants/acme/invitations/5/": () => reply(409, { error: { code: "invitation_not_pending", message: "The invitation is accepted." } }) },
    });
    render(<Settings slug="acme" role="admin" />);
    await screen.findByTestId("invitations");
    const roles = [...(screen.getByLabelText("Invited role") as HTMLSelectElement).options].map((o) => o.value);
    expect(roles).toEqual(["admin", "analyst", "integrator", "auditor"]);
    fireEvent.click(screen.getByRole("button", { name: "Revoke the invitation to new@acme.example" }));
    expect(await screen.findByText("The invitation is accepted.")).toBeTruthy();
  });

  it("says so to a role that may not invite, without asking for the list", async () => {
    const { calls } = server();
    render(<Settings slug="acme" role="analyst" />);
    expect(await screen.findByText("Only owners and admins invite members and see invitations.")).toBeTruthy();
    expect(calls.some((c) => c.includes("/invitations/"))).toBe(false);
    expect(screen.queryByLabelText("Invite (e-mail)")).toBeNull();
  });
});

describe("Settings: API key expiry", () => {
  it("checks the expiry on the client", () => {
    const now = new Date("2026-12-07T12:00:00Z");
    expect(checkKey("ci", ["read"], "", now)).toEqual({});
    expect(checkKey("ci", ["read"], "2000-01-01T00:00", now).expires_at).toEqual(["The expiry must be in the future."]);
    expect(checkKey("ci", ["read"], "soon", now).expires_at).toBeTruthy();
    expect(checkKey("", [], "2099-01-01T00:00", now)).toEqual({ name: ["Name the key (what uses it)."], scopes: ["Choose at least one scope."] });
  });

  it("sends the chosen expiry, shows the server's field error under it, and the secret once", async () => {
    let refuse = true;
    const { bodies } = server({
      keys: { results: [activeKey], next: null },
      post: {
        "tenants/acme/api-keys/": (body) => {
          if (refuse) { refuse = false; return reply(400, { error: { code: "validation_error", message: "The request is invalid; see fields.", fields: { expires_at: ["Must be in the future."] } } }); }
          return reply(201, { ...activeKey, id: 3, name: body.name, expires_at: body.expires_at, key: "coh_abcd_secret" });
        },
      },
    });
    render(<Settings slug="acme" role="owner" />);
    const keys = await screen.findByTestId("api-keys");
    expect(within(keys).getByText("never")).toBeTruthy(); // last used
    expect(within(keys).getByText(new Date("2027-01-01T00:00:00Z").toLocaleString())).toBeTruthy(); // expires

    fireEvent.change(screen.getByLabelText("New key"), { target: { value: "nightly" } });
    fireEvent.change(screen.getByLabelText("Expires (empty: never)"), { target: { value: "2000-01-01T00:00" } });
    fireEvent.click(screen.getByRole("button", { name: "Create key" }));
    expect(await screen.findByText("The expiry must be in the future.")).toBeTruthy();
    expect(bodies).toHaveLength(0);

    fireEvent.change(screen.getByLabelText("Expires (empty: never)"), { target: { value: "2099-06-30T18:30" } });
    fireEvent.click(screen.getByRole("button", { name: "Create key" }));
    expect(await screen.findByText("Must be in the future.")).toBeTruthy();
    const expires = screen.getByLabelText("Expires (empty: never)");
    expect(expires.getAttribute("aria-describedby")).toBe("key-error-expires_at");
    expect(expires.getAttribute("aria-invalid")).toBe("true");
    expect(bodies[0]).toEqual({ name: "nightly", scopes: ["read"], expires_at: new Date("2099-06-30T18:30").toISOString() });

    fireEvent.click(screen.getByRole("button", { name: "Create key" }));
    expect((await screen.findByTestId("new-key")).textContent).toContain("coh_abcd_secret");
    expect(screen.queryByText("Must be in the future.")).toBeNull();
    expect((screen.getByLabelText("Expires (empty: never)") as HTMLInputElement).value).toBe("");
  });

  it("leaves the expiry out when it is empty (a key that does not expire)", async () => {
    const { bodies } = server({ post: { "tenants/acme/api-keys/": (body) => reply(201, { ...activeKey, name: body.name, expires_at: null, key: "coh_x" }) } });
    render(<Settings slug="acme" role="owner" />);
    expect(await screen.findByText("No API keys.")).toBeTruthy();
    fireEvent.change(screen.getByLabelText("New key"), { target: { value: "forever" } });
    fireEvent.click(screen.getByRole("button", { name: "Create key" }));
    await screen.findByTestId("new-key");
    expect(bodies[0]).toEqual({ name: "forever", scopes: ["read"] });
  });
});

describe("AcceptInvitation", () => {
  it("checks the token, explains an unknown one, and joins", async () => {
    const bodies: unknown[] = [];
    let known = false;
    vi.stubGlobal("fetch", vi.fn((url: string, init?: RequestInit) => {
      if (url.endsWith("/auth/csrf/")) return reply(200, { csrf_token: "t" });
      bodies.push(JSON.parse(String(init?.body)));
      return known ? reply(201, { tenant: "northbank", role: "analyst" }) : reply(404, { error: { code: "not_found", message: "Not found." } });
    }));
    const joined = vi.fn();
    render(<AcceptInvitation onJoined={joined} />);
    fireEvent.click(screen.getByRole("button", { name: "Accept invitation" }));
    expect(await screen.findByText("Paste the invitation token.")).toBeTruthy();
    fireEvent.change(screen.getByLabelText("Invitation token"), { target: { value: "coh_abc" } });
    fireEvent.click(screen.getByRole("button", { name: "Accept invitation" }));
    expect(await screen.findByText("An invitation token starts with inv_.")).toBeTruthy();
    expect(screen.getByLabelText("Invitation token").getAttribute("aria-describedby")).toBe("accept-error-token");
    expect(bodies).toHaveLength(0);

    fireEvent.change(screen.getByLabelText("Invitation token"), { target: { value: " inv_nope " } });
    fireEvent.click(screen.getByRole("button", { name: "Accept invitation" }));
    expect(await screen.findByText(/No pending invitation to your e-mail address has this token/)).toBeTruthy();
    expect(bodies[0]).toEqual({ token: "inv_nope" });

    known = true;
    fireEvent.change(screen.getByLabelText("Invitation token"), { target: { value: "inv_good" } });
    fireEvent.click(screen.getByRole("button", { name: "Accept invitation" }));
    expect((await screen.findByTestId("joined")).textContent).toBe("You joined northbank as analyst.");
    await waitFor(() => expect(joined).toHaveBeenCalledWith("northbank"));
  });
});
