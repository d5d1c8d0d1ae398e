// What every Guildhall k6 script shares: where the deployment is, how a virtual player signs in
// and keeps a fresh access token, and JSON requests tagged for per-endpoint thresholds.
//
// Environment (k6 -e NAME=value, or the shell's):
//   BASE_URL            the API (default http://localhost:8080: the compose proxy); an ALB's
//                       https://... in AWS
//   WS_URL              the chat WebSocket base, default BASE_URL with ws(s):// for http(s)://
//   GUILDHALL_ADMIN_KEY the server key, for the scripts that create a board
//   UPLOAD_URL_ORIGIN   replaces the scheme://host:port of presigned upload URLs, for a storage
//                       endpoint reached under another name than Guildhall signs for (compose
//                       needs none: it sets BLOB_PUBLIC_ENDPOINT_URL=http://localhost:5000)
//   RUN_ID              names this run's board, rooms and players (default: the start time)

import http from "k6/http";
import type { Params, RefinedResponse, ResponseType } from "k6/http";
import { check, fail } from "k6";
import exec from "k6/execution";

export const BASE_URL = (__ENV.BASE_URL || "http://localhost:8080").replace(/\/+$/, "");
export const WS_URL = (__ENV.WS_URL || BASE_URL.replace(/^http/, "ws")).replace(/\/+$/, "") + "/v1/chat/ws";
export const ADMIN_KEY = __ENV.GUILDHALL_ADMIN_KEY || "";

/** A whole number from the environment, or `fallback`. */
export function envNumber(name: string, fallback: number): number {
  const raw = __ENV[name];
  if (raw === undefined || raw === "") {
    return fallback;
  }
  const value = Number(raw);
  if (!Number.isFinite(value)) {
    throw new Error(`${name} must be a number, got ${raw}`);
  }
  return value;
}

/** A duration such as `30s` or `5m` from the environment, or `fallback`. */
export function envDuration(name: string, fallback: string): string {
  return __ENV[name] || fallback;
}

/** Names a run's board, rooms and players; computed in `setup()` and handed to every VU. */
export function newRunId(): string {
  return __ENV.RUN_ID || Date.now().toString(36);
}

/** The token pair of `POST /v1/auth/guest`, `/login` and `/refresh`. */
export interface TokenPair {
  access_token: string;
  refresh_token: string;
  token_type: string;
  expires_in: number;
}

/** A signed-in virtual player. */
export interface Session {
  tokens: TokenPair;
  /** When the access token was issued (ms since the epoch). */
  issuedAt: number;
  deviceId: string;
}

/** Request parameters: JSON, a bearer token when given, and the tags thresholds select on. */
export function params(endpoint: string, name: string, token?: string, extra?: Params): Params {
  const headers: Record<string, string> = { "Content-Type": "application/json", Accept: "application/json" };
  if (token) {
    headers.Authorization = `Bearer ${token}`;
  }
  return { ...extra, headers: { ...headers, ...extra?.headers }, tags: { endpoint, name, ...extra?.tags } };
}

/** The JSON body of `res`, or `null` when it has none or it is not JSON. */
export function body<T>(res: RefinedResponse<ResponseType | undefined>): T | null {
  try {
    return res.json() as unknown as T;
  } catch {
    return null;
  }
}

/** `POST path` with a JSON body. */
export function postJson(path: string, payload: unknown, p: Params): RefinedResponse<"text"> {
  return http.post(`${BASE_URL}${path}`, JSON.stringify(payload), p) as RefinedResponse<"text">;
}

/** Signs in the guest of `deviceId` (made on first use). */
export function guest(deviceId: string): Session {
  const res = postJson("/v1/auth/guest", { device_id: deviceId }, params("auth_guest", "POST /v1/auth/guest"));
  const tokens = body<TokenPair>(res);
  if (!check(res, { "guest sign-in: 200 or 201": (r) => r.status === 200 || r.status === 201 }) || !tokens) {
    fail(`guest sign-in failed: ${res.status} ${res.body}`);
  }
  return { tokens, issuedAt: Date.now(), deviceId };
}

/** Registers a full account (Argon2id on the server: the expensive sign-up path). */
export function register(runId: string, n: number): Session {
  const suffix = `${runId}${n}`.replace(/[^A-Za-z0-9]/g, "").slice(-18);
  const res = postJson(
    "/v1/auth/register",
    { email: `k6-${runId}-${n}@example.test`, password: `k6-load-test-${runId}-${n}`, username: `k6_${suffix}` },
    params("auth_register", "POST /v1/auth/register"),
  );
  const created = body<{ tokens: TokenPair }>(res);
  if (!check(res, { "register: 201": (r) => r.status === 201 }) || !created) {
    fail(`registration failed: ${res.status} ${res.body}`);
  }
  return { tokens: created.tokens, issuedAt: Date.now(), deviceId: "" };
}

/** Swaps the session's refresh token for a new pair (the old one stops working). */
export function refresh(session: Session): Session {
  const res = postJson(
    "/v1/auth/refresh",
    { refresh_token: session.tokens.refresh_token },
    params("auth_refresh", "POST /v1/auth/refresh"),
  );
  const tokens = body<TokenPair>(res);
  if (!check(res, { "refresh: 200": (r) => r.status === 200 }) || !tokens) {
    fail(`refresh failed: ${res.status} ${res.body}`);
  }
  return { ...session, tokens, issuedAt: Date.now() };
}

// Each VU is one player at a time: its session lives in the VU's copy of this module.
let current: Session | null = null;

/**
 * The VU's player, signed in as the guest `guest-<run>-<vu>` on first use, and refreshed a minute
 * before its access token expires (access tokens live 15 minutes by default).
 */
export function player(runId: string): Session {
  if (current === null) {
    current = guest(`k6-${runId}-vu${exec.vu.idInTest}`);
  } else if (Date.now() - current.issuedAt > (current.tokens.expires_in - 60) * 1000) {
    current = refresh(current);
  }
  return current;
}

/** Creates the board `id` (desc, best) with the server key; an existing one is fine. */
export function ensureBoard(id: string): void {
  if (!ADMIN_KEY) {
    fail("set GUILDHALL_ADMIN_KEY: creating the test board needs the server key");
  }
  const res = postJson(
    "/v1/admin/leaderboards",
    { id, sort: "desc", operator: "best" },
    params("admin_create_board", "POST /v1/admin/leaderboards", ADMIN_KEY, {
      responseCallback: http.expectedStatuses(201, 409),
    }),
  );
  if (res.status !== 201 && res.status !== 409) {
    fail(`creating board ${id} failed: ${res.status} ${res.body}`);
  }
}

/** `url` with its origin replaced by UPLOAD_URL_ORIGIN when that is set. */
export function uploadUrl(url: string): string {
  const origin = __ENV.UPLOAD_URL_ORIGIN;
  return origin ? url.replace(/^[a-z]+:\/\/[^/]+/i, origin.replace(/\/+$/, "")) : url;
}
