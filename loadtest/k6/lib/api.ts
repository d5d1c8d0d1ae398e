// What every Guildhall k6 script shares: where the deployment is, how a virtual player signs in
// (as a guest, by registering, or with a password), keeps a fresh access token by rotating its
// refresh token, and signs out; JSON requests tagged for per-endpoint thresholds; and the clock
// of a scenario, so that sessions end with it.
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
//   LOGINS_PER_ACCOUNT  password sign-ins one account makes in 15 minutes at most (default 8,
//                       as players do; the server throttles failed logins only)

import http from "k6/http";
import type { Params, RefinedResponse, ResponseType } from "k6/http";
import { check } from "k6";
import exec from "k6/execution";

export const BASE_URL = (__ENV.BASE_URL || "http://localhost:8080").replace(/\/+$/, "");
export const WS_URL = (__ENV.WS_URL || BASE_URL.replace(/^http/, "ws")).replace(/\/+$/, "") + "/v1/chat/ws";
export const ADMIN_KEY = __ENV.GUILDHALL_ADMIN_KEY || "";

/** A number from the environment, or `fallback`. */
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

/**
 * Seconds in a k6 duration (`90s`, `1m30s`, `2h`, `500ms`; a bare number is seconds), for
 * scripts that derive one scenario's length from another's.
 */
export function durationSeconds(text: string): number {
  if (/^\d+(\.\d+)?$/.test(text)) {
    return Number(text);
  }
  const units: Record<string, number> = { h: 3600, m: 60, s: 1, ms: 0.001 };
  let seconds = 0;
  const rest = text.replace(/(\d+(?:\.\d+)?)(ms|h|m|s)/g, (_, value: string, unit: string) => {
    seconds += Number(value) * units[unit];
    return "";
  });
  if (rest !== "" || text === "") {
    throw new Error(`not a duration: ${text} (write it as 90s, 1m30s, 2h)`);
  }
  return seconds;
}

/** Seconds until the running scenario, `scenarioSeconds` long, reaches its end. */
export function secondsLeft(scenarioSeconds: number): number {
  return (exec.scenario.startTime + scenarioSeconds * 1000 - Date.now()) / 1000;
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
  /** When the access token was issued (ms since the epoch, by k6's clock). */
  issuedAt: number;
  /** Who the player is across sessions (a device id or an email): seeds their skill. */
  who: string;
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

/** The token pair in `res`, when it is one. */
function tokenPair(res: RefinedResponse<"text">): TokenPair | null {
  const pair = body<TokenPair>(res);
  return pair && typeof pair.access_token === "string" && typeof pair.refresh_token === "string" ? pair : null;
}

/** Signs in the guest of `deviceId` (made on first use); `null` when refused. */
export function guest(deviceId: string): Session | null {
  const res = postJson("/v1/auth/guest", { device_id: deviceId }, params("auth_guest", "POST /v1/auth/guest"));
  const tokens = tokenPair(res);
  if (!check(res, { "guest sign-in: 200 or 201": (r) => (r.status === 200 || r.status === 201) && tokens !== null })) {
    console.warn(`guest sign-in failed: ${res.status} ${res.body}`);
    return null;
  }
  return { tokens: tokens as TokenPair, issuedAt: Date.now(), who: deviceId };
}

/** A full account a VU registered, kept so that its player can come back to it later. */
export interface Account {
  email: string;
  password: string;
  /** When it signed in with its password (ms), newest last: the server limits that per account. */
  logins: number[];
  /** When its player was last here (ms): the one away longest comes back first. */
  seenAt: number;
  /** The session it kept when it last left without logging out; resumed with its refresh token. */
  kept: Session | null;
  /** Matches this player has played, so their scores keep improving from visit to visit. */
  matches: number;
}

// The accounts this VU registered (each VU is its own JavaScript runtime, so this is per VU).
const accounts: Account[] = [];
let registered = 0;

/** `runId` reduced to the characters usernames allow, at most `length` of them. */
function runTag(runId: string, length: number): string {
  return (runId.replace(/[^A-Za-z0-9]/g, "") || "run").slice(-length);
}

/**
 * Registers a new full account with an email and a random password (an Argon2id hash on the
 * server: the expensive sign-up path) and remembers it for later password sign-ins.
 */
export function register(runId: string): { session: Session; account: Account } | null {
  registered += 1;
  const vu = exec.vu.idInTest.toString(36);
  const count = registered.toString(36);
  // Usernames are 3-24 of [A-Za-z0-9_], unique regardless of case: the run, the VU, its count.
  const username = `k6_${runTag(runId, 8)}_${vu}_${count}`.slice(0, 24);
  const email = `k6-${runTag(runId, 20)}-vu${vu}-${count}@example.test`;
  const password = crypto.randomUUID();
  const res = postJson("/v1/auth/register", { email, password, username }, params("auth_register", "POST /v1/auth/register"));
  const created = body<{ tokens: TokenPair }>(res);
  if (!check(res, { "register: 201": (r) => r.status === 201 && typeof created?.tokens?.access_token === "string" })) {
    console.warn(`registration failed: ${res.status} ${res.body}`);
    return null;
  }
  const account: Account = { email, password, logins: [], seenAt: Date.now(), kept: null, matches: 0 };
  accounts.push(account);
  return { session: { tokens: (created as { tokens: TokenPair }).tokens, issuedAt: Date.now(), who: email }, account };
}

const FIFTEEN_MINUTES = 15 * 60 * 1000;

/** Whether `account` may sign in with its password now without meeting the per-account limit. */
function mayLogIn(account: Account, now: number): boolean {
  const recent = account.logins.filter((at) => now - at < FIFTEEN_MINUTES);
  account.logins = recent;
  return recent.length < envNumber("LOGINS_PER_ACCOUNT", 8);
}

/**
 * An account this VU registered whose player can come back now: one that kept its session, or
 * one still under the per-account password sign-in limit; the one away longest. `null` when
 * there is none (the caller registers a new player instead).
 */
export function returningAccount(): Account | null {
  const now = Date.now();
  const ready = accounts.filter((a) => a.kept !== null || mayLogIn(a, now));
  if (ready.length === 0) {
    return null;
  }
  const account = ready.reduce((longest, a) => (a.seenAt < longest.seenAt ? a : longest));
  account.seenAt = now;
  return account;
}

/** Signs `account` in with its email and password (`POST /v1/auth/login`); `null` when refused. */
export function login(account: Account): Session | null {
  account.logins.push(Date.now());
  const res = postJson(
    "/v1/auth/login",
    { email: account.email, password: account.password },
    params("auth_login", "POST /v1/auth/login"),
  );
  const tokens = tokenPair(res);
  if (!check(res, { "password login: 200": (r) => r.status === 200 && tokens !== null })) {
    console.warn(`password login failed: ${res.status} ${res.body}`);
    return null;
  }
  return { tokens: tokens as TokenPair, issuedAt: Date.now(), who: account.email };
}

/**
 * A returning account holder's session: the one they kept, resumed with a refresh (a game keeps
 * its refresh token between launches), or else a password sign-in.
 */
export function comeBack(account: Account): Session | null {
  const kept = account.kept;
  account.kept = null;
  if (kept !== null) {
    const resumed = refresh(kept);
    if (resumed !== null) {
      return resumed;
    }
  }
  return login(account);
}

/**
 * Swaps the session's refresh token for a new pair. Refresh tokens are single use: the old one
 * stops working, and presenting it again would end the session, so only the new pair is kept.
 * `null` when refused (the session ended).
 */
export function refresh(session: Session): Session | null {
  const res = postJson(
    "/v1/auth/refresh",
    { refresh_token: session.tokens.refresh_token },
    params("auth_refresh", "POST /v1/auth/refresh"),
  );
  const tokens = tokenPair(res);
  if (
    !check(res, {
      "refresh: 200": (r) => r.status === 200 && tokens !== null,
      "refresh: a new refresh token": () => tokens !== null && tokens.refresh_token !== session.tokens.refresh_token,
    })
  ) {
    console.warn(`refresh failed: ${res.status} ${res.body}`);
    return null;
  }
  return { ...session, tokens: tokens as TokenPair, issuedAt: Date.now() };
}

/**
 * Whether the session's access token is close enough to its expiry to refresh it first: within
 * a fifth of its lifetime, at most a minute, at least two seconds (the server stamps tokens in
 * whole seconds, and the request takes time).
 */
export function expiresSoon(session: Session): boolean {
  const lifetime = session.tokens.expires_in * 1000;
  const margin = Math.max(2000, Math.min(60_000, lifetime / 5));
  return Date.now() - session.issuedAt > lifetime - margin;
}

/** Ends the session (`POST /v1/auth/logout`): its tokens stop working everywhere. */
export function logout(session: Session): void {
  const res = http.post(`${BASE_URL}/v1/auth/logout`, null, params("auth_logout", "POST /v1/auth/logout", session.tokens.access_token));
  check(res, { "logout: 204": (r) => r.status === 204 });
}

// A VU that plays one player for the whole run keeps its session here.
let current: Session | null = null;

/**
 * The VU's player for the whole run, the guest `k6-<run>-vu<n>`: signed in on first use, and its
 * access token refreshed before it expires (they live 15 minutes by default), as a game client
 * that stays open does. A session the server ended is replaced by a new sign-in.
 */
export function player(runId: string): Session | null {
  if (current !== null && expiresSoon(current)) {
    current = refresh(current);
  }
  if (current === null) {
    current = guest(`k6-${runId}-vu${exec.vu.idInTest}`);
  }
  return current;
}

/** Creates the board `id` (desc, best) with the server key; an existing one is fine. */
export function ensureBoard(id: string): void {
  if (!ADMIN_KEY) {
    throw new Error("set GUILDHALL_ADMIN_KEY: creating the test board needs the server key");
  }
  const res = postJson(
    "/v1/admin/leaderboards",
    { id, sort: "desc", operator: "best" },
    params("admin_create_board", "POST /v1/admin/leaderboards", ADMIN_KEY, {
      responseCallback: http.expectedStatuses(201, 409),
    }),
  );
  if (res.status !== 201 && res.status !== 409) {
    throw new Error(`creating board ${id} failed: ${res.status} ${res.body}`);
  }
}

/** `url` with its origin replaced by UPLOAD_URL_ORIGIN when that is set. */
export function uploadUrl(url: string): string {
  const origin = __ENV.UPLOAD_URL_ORIGIN;
  return origin ? url.replace(/^[a-z]+:\/\/[^/]+/i, origin.replace(/\/+$/, "")) : url;
}
