// What players do, as functions the per-service scripts and the game-night scenario share: play a
// match (submit a score that grows with practice, safely retried, then read the rank), browse a
// board, change their avatar (with a real PUT of a PNG to the presigned URL), and hold a chat
// session over the WebSocket.

import http from "k6/http";
import type { RefinedResponse } from "k6/http";
import { check, sleep } from "k6";
import { Counter, Rate, Trend } from "k6/metrics";
import encoding from "k6/encoding";
import exec from "k6/execution";
// k6/websockets is the stable name from k6 1.6 on, where this one still works with a deprecation
// warning; k6 1.1 to 1.5 have only this one (loadtest/README.md, "k6").
import { WebSocket } from "k6/experimental/websockets";
import { clearTimeout, setTimeout } from "k6/timers";
import { BASE_URL, WS_URL, body, params, postJson, uploadUrl } from "./api.ts";

// ---------------------------------------------------------------- leaderboard

interface RecordView {
  owner_id: string;
  score: number;
  rank: number;
}

/** Submissions that set the player's record (the board's write path), of all submissions. */
export const scoreNewBest = new Rate("score_new_best");
/** Submissions sent again, with the same `Idempotency-Key`, after a failure in transit. */
export const submitRetries = new Counter("submit_retries");

/** FNV-1a: a stable 32-bit number per player, so each has their own skill. */
function hash(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  }
  return h >>> 0;
}

/** A standard normal draw (Box-Muller). */
function gaussian(): number {
  return Math.sqrt(-2 * Math.log(1 - Math.random())) * Math.cos(2 * Math.PI * Math.random());
}

/**
 * What player `who` scores in their `match`-th match (from 0): a starting skill of their own
 * (1 000 to 10 000), improving by their own 50 to 150 points a match, give or take 300 of luck.
 * So each player's record keeps rising (about a third of submissions beat it and are written)
 * while the rest cannot beat it and take the board's shortcut: the mix a live `best` board sees.
 */
export function matchScore(who: string, match: number): number {
  const h = hash(who);
  const start = 1000 + (h % 9000);
  const improvement = 50 + ((h >>> 16) % 101);
  return Math.max(0, Math.round(start + improvement * match + 300 * gaussian()));
}

/** Answers a submission may be sent again for: lost in transit, timed out, or not served. */
function retryable(status: number): boolean {
  return status === 0 || status === 408 || status === 429 || status >= 500;
}

/**
 * Submits `score` as a game client does: with an `Idempotency-Key` made for this submission and
 * sent again unchanged on every retry (up to `attempts` sends, backing off), so that a
 * submission whose answer was lost is never counted twice.
 */
export function submitScore(board: string, token: string, score: number, attempts = 3): RecordView | null {
  const key = crypto.randomUUID();
  let res: RefinedResponse<"text"> | null = null;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    if (attempt > 1) {
      submitRetries.add(1);
      const retryAfter = Number(res?.headers["Retry-After"]);
      sleep(Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : 0.25 * 2 ** (attempt - 2) * (1 + Math.random()));
    }
    res = postJson(
      `/v1/leaderboards/${board}/scores`,
      { score },
      params("submit_score", "POST /v1/leaderboards/:id/scores", token, {
        headers: { "Idempotency-Key": key },
        timeout: "10s",
        tags: { attempt: String(attempt) },
      }),
    );
    if (!retryable(res.status)) {
      break;
    }
  }
  const record = res === null ? null : body<RecordView>(res);
  check(res, {
    "submit score: 200": (r) => r?.status === 200,
    "submit score: ranked": () => (record?.rank ?? 0) >= 1,
    "submit score: the record is at least the score": () => record !== null && record.score >= score,
  });
  if (res?.status === 200 && record !== null) {
    scoreNewBest.add(record.score === score);
    return record;
  }
  return null;
}

/** One match: submit the player's score for it, then read their rank. */
export function playMatch(board: string, token: string, who: string, match: number): void {
  submitScore(board, token, matchScore(who, match));
  const mine = http.get(
    `${BASE_URL}/v1/leaderboards/${board}/records/me`,
    params("my_rank", "GET /v1/leaderboards/:id/records/me", token),
  );
  check(mine, { "my rank: 200": (r) => r.status === 200 });
}

/** What a player looks at between matches: the top 10 and the records around their own. */
export function browseBoard(board: string, token: string): void {
  const top = http.get(
    `${BASE_URL}/v1/leaderboards/${board}/records?limit=10`,
    params("top_records", "GET /v1/leaderboards/:id/records", token),
  );
  check(top, { "top 10: 200": (r) => r.status === 200 });
  const around = http.get(
    `${BASE_URL}/v1/leaderboards/${board}/around/me?limit=10`,
    params("around_me", "GET /v1/leaderboards/:id/around/me", token),
  );
  check(around, { "around me: 200": (r) => r.status === 200 });
}

// ---------------------------------------------------------------- uploads

/** A real 2x2 RGBA PNG (79 bytes), so that the server's content check passes. */
const AVATAR_PNG: ArrayBuffer = encoding.b64decode(
  "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAYAAABytg0kAAAAFklEQVR42mM4sUDjf4XGgv8MIALEAQBUVAmdnM8LigAAAABJRU5ErkJggg==",
);

interface UploadTicket {
  asset_id: string;
  upload: { method: string; url: string; headers: Record<string, string> };
  expires_at: string;
}

interface AssetView {
  id: string;
  state: "pending" | "verifying" | "ready" | "rejected";
  reject_reason?: string;
  download_url?: string;
}

/** From `POST .../complete` to the asset's `ready` (or `rejected`): the worker's check. */
export const assetReadyMs = new Trend("asset_ready_ms", true);
/** Avatars that became ready, of those completed. */
export const assetsReady = new Rate("assets_ready");

/**
 * Uploads a PNG as a client does: asks for an upload URL, PUTs the bytes to whatever URL came
 * back (S3's presigned URL, or Guildhall's own) with exactly the headers that came with it,
 * declares it complete, waits for the check (polling, up to `waitSeconds`) and downloads it from
 * its `download_url`. Returns the asset's id and whether it became ready; `null` when no asset
 * was made.
 */
function uploadPng(token: string, waitSeconds: number): { id: string; ready: boolean } | null {
  const created = postJson(
    "/v1/uploads",
    { purpose: "avatar", content_type: "image/png", size_bytes: AVATAR_PNG.byteLength },
    params("upload_create", "POST /v1/uploads", token),
  );
  const ticket = body<UploadTicket>(created);
  if (!check(created, { "upload create: 201": (r) => r.status === 201 && ticket !== null }) || ticket === null) {
    return null;
  }
  const put = http.put(uploadUrl(ticket.upload.url), AVATAR_PNG, {
    headers: ticket.upload.headers,
    tags: { endpoint: "blob_put", name: "PUT presigned upload URL" },
  });
  if (!check(put, { "upload PUT: 2xx": (r) => r.status >= 200 && r.status < 300 })) {
    return { id: ticket.asset_id, ready: false };
  }
  const completed = http.post(
    `${BASE_URL}/v1/uploads/${ticket.asset_id}/complete`,
    null,
    params("upload_complete", "POST /v1/uploads/:id/complete", token),
  );
  if (!check(completed, { "upload complete: 202": (r) => r.status === 202 })) {
    return { id: ticket.asset_id, ready: false };
  }
  const started = Date.now();
  let asset = body<AssetView>(completed);
  while (asset !== null && (asset.state === "pending" || asset.state === "verifying")) {
    if (Date.now() - started > waitSeconds * 1000) {
      break;
    }
    sleep(0.2);
    asset = body<AssetView>(
      http.get(`${BASE_URL}/v1/assets/${ticket.asset_id}`, params("asset_get", "GET /v1/assets/:id", token)),
    );
  }
  assetReadyMs.add(Date.now() - started);
  const ready = asset !== null && asset.state === "ready";
  assetsReady.add(ready);
  check(asset, { "avatar ready": () => ready });
  if (ready && asset?.download_url) {
    const download = http.get(uploadUrl(asset.download_url), {
      responseType: "binary",
      tags: { endpoint: "blob_get", name: "GET download_url" },
    });
    check(download, {
      "download: 200": (r) => r.status === 200,
      "download: the same bytes": (r) => r.body instanceof ArrayBuffer && r.body.byteLength === AVATAR_PNG.byteLength,
    });
  }
  return { id: ticket.asset_id, ready };
}

/** Deletes one of the player's assets; one already gone (another session of theirs) is fine. */
function deleteAsset(token: string, id: string): void {
  const removed = http.del(
    `${BASE_URL}/v1/assets/${id}`,
    null,
    params("asset_delete", "DELETE /v1/assets/:id", token, { responseCallback: http.expectedStatuses(204, 404) }),
  );
  check(removed, { "asset delete: 204 or gone": (r) => r.status === 204 || r.status === 404 });
}

/**
 * A player changes their avatar: reads their profile (the current avatar), uploads the new
 * picture (`uploadPng`), makes it the profile's avatar, lists their assets, and deletes the
 * avatar it replaced, so that a player keeps one avatar however long the test runs (the upload
 * quota is 100 assets). A new upload that did not become ready is deleted instead.
 */
export function changeAvatar(token: string, waitSeconds = 15): void {
  const me = http.get(`${BASE_URL}/v1/accounts/me`, params("me", "GET /v1/accounts/me", token));
  if (!check(me, { "me: 200": (r) => r.status === 200 })) {
    return;
  }
  const previous = body<{ avatar_asset_id?: string | null }>(me)?.avatar_asset_id ?? null;
  const upload = uploadPng(token, waitSeconds);
  if (upload === null) {
    return;
  }
  if (!upload.ready) {
    deleteAsset(token, upload.id);
    return;
  }
  const updated = http.patch(
    `${BASE_URL}/v1/accounts/me`,
    JSON.stringify({ avatar_asset_id: upload.id }),
    params("me_update", "PATCH /v1/accounts/me", token),
  );
  check(updated, { "avatar set: 200": (r) => r.status === 200 });
  const mine = http.get(`${BASE_URL}/v1/assets?owner=me&limit=10`, params("assets_list", "GET /v1/assets", token));
  check(mine, { "my assets: 200": (r) => r.status === 200 });
  if (previous !== null && previous !== upload.id) {
    deleteAsset(token, previous);
  }
}

// ---------------------------------------------------------------- chat

/** From sending a chat message to its `ack` (the message stored). */
export const chatAckMs = new Trend("chat_ack_ms", true);
/** From a player's send to another player's receipt (one clock: every VU runs in this k6). */
export const chatDeliveryMs = new Trend("chat_delivery_ms", true);
/** From opening the socket to the `ack` of the join (connect, authenticate, join). */
export const chatJoinMs = new Trend("chat_join_ms", true);
export const chatMessagesReceived = new Counter("chat_messages_received");
/** Socket errors and error frames (other than rate limiting), of the answers to client frames. */
export const chatErrors = new Rate("chat_errors");
export const chatRateLimited = new Counter("chat_rate_limited");
/** Sockets that authenticated and joined, of those opened. */
export const chatJoined = new Rate("chat_joined");

export interface ChatOptions {
  /** The channel, e.g. `room:k6-<run>-3`. */
  channel: string;
  /** How long to stay connected. */
  seconds: number;
  /** Mean milliseconds between this player's messages (the server allows 2 a second, bursts of 10). */
  sendEveryMs: number;
}

interface Frame {
  type: string;
  id?: number | null;
  code?: string;
  channel?: string;
  message?: unknown;
}

const AUTH = 1;
const JOIN = 2;

/**
 * One chat session, as a game's chat window holds it: read the channel's recent history, connect,
 * authenticate with the first frame, join `channel`, then talk at a human pace (gaps drawn around
 * `sendEveryMs`, a typing event before some messages) while listening to everyone else, and
 * leave with a normal close after `seconds`. Message bodies carry their send time, so receipts
 * measure delivery end to end. Resolves, once the socket has closed, to whether the session
 * joined; a caller reconnecting after one that did not should back off first.
 */
export function chatSession(token: string, options: ChatOptions): Promise<boolean> {
  const history = http.get(
    `${BASE_URL}/v1/chat/channels/${options.channel}/messages?limit=50`,
    params("chat_history", "GET /v1/chat/channels/:id/messages", token),
  );
  check(history, { "chat history: 200": (r) => r.status === 200 });

  let joined = false;
  const openedAt = Date.now();
  const sends = new Map<number, number>();
  let nextId = JOIN + 1;
  let talking: number | null = null;
  const ws = new WebSocket(WS_URL);

  const frame = (payload: Record<string, unknown>): number => {
    const id = nextId++;
    ws.send(JSON.stringify({ id, channel: options.channel, ...payload }));
    return id;
  };
  // Each message after a gap around sendEveryMs; in half of the gaps the player is seen typing
  // for the last second before it.
  const talk = (): void => {
    const gap = options.sendEveryMs * (0.5 + Math.random());
    const typesFirst = gap > 1500 && Math.random() < 0.5;
    talking = setTimeout(
      () => {
        if (typesFirst) {
          frame({ type: "typing" });
        }
        talking = setTimeout(
          () => {
            const sentAt = Date.now();
            sends.set(frame({ type: "send", body: `k6 ${sentAt} vu${exec.vu.idInTest} says gg` }), sentAt);
            talk();
          },
          typesFirst ? 1000 : 0,
        );
      },
      typesFirst ? gap - 1000 : gap,
    );
  };
  const finish = setTimeout(() => {
    if (talking !== null) {
      clearTimeout(talking);
      talking = null;
    }
    ws.close(1000, "k6 session over");
  }, options.seconds * 1000);

  ws.onopen = () => {
    ws.send(JSON.stringify({ id: AUTH, type: "auth", token }));
  };
  ws.onmessage = (event) => {
    if (!event || typeof event.data !== "string") {
      return;
    }
    const incoming = JSON.parse(event.data) as Frame;
    const now = Date.now();
    if (incoming.type === "ack") {
      if (incoming.id === AUTH) {
        ws.send(JSON.stringify({ id: JOIN, type: "join", channel: options.channel }));
      } else if (incoming.id === JOIN) {
        joined = true;
        chatJoinMs.add(now - openedAt);
        talk();
      } else if (typeof incoming.id === "number" && sends.has(incoming.id)) {
        chatAckMs.add(now - (sends.get(incoming.id) ?? now));
        sends.delete(incoming.id);
      }
      chatErrors.add(false);
    } else if (incoming.type === "error") {
      if (typeof incoming.id === "number") {
        sends.delete(incoming.id);
      }
      if (incoming.code === "rate_limited") {
        chatRateLimited.add(1);
      } else {
        chatErrors.add(true);
        console.warn(`chat error frame: ${event.data}`);
      }
    } else if (incoming.type === "message") {
      chatMessagesReceived.add(1);
      const text = (incoming.message as { body?: unknown } | undefined)?.body;
      const sentAt = typeof text === "string" ? Number(text.split(" ")[1]) : NaN;
      if (Number.isFinite(sentAt)) {
        chatDeliveryMs.add(now - sentAt);
      }
    }
  };
  ws.onerror = (event) => {
    chatErrors.add(true);
    console.warn(`chat socket error: ${event?.error ?? "unknown"}`);
  };
  return new Promise((resolve) => {
    ws.onclose = () => {
      if (talking !== null) {
        clearTimeout(talking);
        talking = null;
      }
      clearTimeout(finish);
      chatJoined.add(joined);
      resolve(joined);
    };
  });
}

/** Waits `seconds` without blocking the VU's event loop. */
export function pause(seconds: number): Promise<void> {
  return new Promise((resolve) => {
    setTimeout(resolve, Math.max(0, seconds) * 1000);
  });
}

/**
 * One turn of a chat player who stays for the rest of the scenario (`secondsLeft`): a session of
 * about `sessionSeconds` (a fifth either way, so that reconnects spread out), ending by the time
 * the scenario does so that k6's stop never cuts one off; after a session that failed to join, a
 * second or two before the next attempt, as a client backs off.
 */
export async function chatTurn(
  token: string,
  secondsLeft: number,
  sessionSeconds: number,
  options: Omit<ChatOptions, "seconds">,
): Promise<void> {
  const end = Date.now() + secondsLeft * 1000;
  const seconds = Math.min(sessionSeconds * (0.8 + 0.4 * Math.random()), secondsLeft);
  if (seconds < 2) {
    await pause(secondsLeft);
    return;
  }
  if (!(await chatSession(token, { ...options, seconds }))) {
    await pause(Math.min(1 + Math.random(), (end - Date.now()) / 1000));
  }
}
