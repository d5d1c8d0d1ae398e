// What players do, as functions the per-service scripts and the game-night scenario share: play a
// match (submit a score, read the rank), browse a board, upload an avatar (with a real PUT of a
// PNG to the presigned URL), and hold a chat session over the WebSocket.

import http from "k6/http";
import { check, sleep } from "k6";
import { Counter, Rate, Trend } from "k6/metrics";
import encoding from "k6/encoding";
import exec from "k6/execution";
import { WebSocket } from "k6/experimental/websockets";
import { clearInterval, clearTimeout, setInterval, setTimeout } from "k6/timers";
import { BASE_URL, WS_URL, body, params, postJson, uploadUrl } from "./api.ts";

// ---------------------------------------------------------------- leaderboard

interface RecordView {
  owner_id: string;
  score: number;
  rank: number;
}

/** One match: submit a score (0..1 000 000, the board keeps the best), then read the rank. */
export function playMatch(board: string, token: string): void {
  const score = Math.floor(Math.random() * 1_000_000);
  const submitted = postJson(
    `/v1/leaderboards/${board}/scores`,
    { score },
    params("submit_score", "POST /v1/leaderboards/:id/scores", token),
  );
  check(submitted, {
    "submit score: 200": (r) => r.status === 200,
    "submit score: ranked": (r) => (body<RecordView>(r)?.rank ?? 0) >= 1,
  });
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
 * Uploads an avatar as a client does: asks for an upload URL, PUTs the PNG's bytes to it with the
 * signed headers, declares it complete, waits for the check (polling, up to `waitSeconds`),
 * downloads it from its `download_url`, and deletes it again so that the player's quota (100
 * assets) does not run out in a long test.
 */
export function uploadAvatar(token: string, waitSeconds = 15): void {
  const created = postJson(
    "/v1/uploads",
    { purpose: "avatar", content_type: "image/png", size_bytes: AVATAR_PNG.byteLength },
    params("upload_create", "POST /v1/uploads", token),
  );
  const ticket = body<UploadTicket>(created);
  if (!check(created, { "upload create: 201": (r) => r.status === 201 }) || !ticket) {
    return;
  }
  const put = http.put(uploadUrl(ticket.upload.url), AVATAR_PNG, {
    headers: ticket.upload.headers,
    tags: { endpoint: "blob_put", name: "PUT presigned upload URL" },
  });
  if (!check(put, { "upload PUT: 2xx": (r) => r.status >= 200 && r.status < 300 })) {
    return;
  }
  const completed = http.post(
    `${BASE_URL}/v1/uploads/${ticket.asset_id}/complete`,
    null,
    params("upload_complete", "POST /v1/uploads/:id/complete", token),
  );
  if (!check(completed, { "upload complete: 202": (r) => r.status === 202 })) {
    return;
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
  const mine = http.get(`${BASE_URL}/v1/assets?owner=me&limit=10`, params("assets_list", "GET /v1/assets", token));
  check(mine, { "my assets: 200": (r) => r.status === 200 });
  const removed = http.del(`${BASE_URL}/v1/assets/${ticket.asset_id}`, null, params("asset_delete", "DELETE /v1/assets/:id", token));
  check(removed, { "asset delete: 204": (r) => r.status === 204 });
}

// ---------------------------------------------------------------- chat

/** From sending a chat frame to its `ack` (the message stored). */
export const chatAckMs = new Trend("chat_ack_ms", true);
/** From a player's send to another player's receipt (one clock: every VU runs in this k6). */
export const chatDeliveryMs = new Trend("chat_delivery_ms", true);
/** From opening the socket to the `ack` of the join (connect, authenticate, join). */
export const chatJoinMs = new Trend("chat_join_ms", true);
export const chatMessagesReceived = new Counter("chat_messages_received");
/** Error frames (other than rate limiting) among the frames that answer a client frame. */
export const chatErrors = new Rate("chat_errors");
export const chatRateLimited = new Counter("chat_rate_limited");
/** Sockets that authenticated and joined, of those opened. */
export const chatJoined = new Rate("chat_joined");

export interface ChatOptions {
  /** The channel, e.g. `room:k6-<run>-3`. */
  channel: string;
  /** How long to stay connected. */
  seconds: number;
  /** Milliseconds between this player's messages (the server allows 2 a second, bursts of 10). */
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
 * One chat session: connect, authenticate with the first frame, join `channel`, send a message
 * every `sendEveryMs` while listening to everyone else's, and leave with a normal close after
 * `seconds`. Message bodies carry their send time, so receipts measure delivery end to end.
 */
export function chatSession(token: string, options: ChatOptions): void {
  const openedAt = Date.now();
  const pending = new Map<number, number>();
  let nextId = JOIN + 1;
  let joined = false;
  let sender: number | null = null;
  const ws = new WebSocket(WS_URL);

  const stop = (): void => {
    if (sender !== null) {
      clearInterval(sender);
      sender = null;
    }
  };
  const finish = setTimeout(() => {
    stop();
    ws.close(1000, "k6 session over");
  }, options.seconds * 1000);

  ws.onopen = () => {
    ws.send(JSON.stringify({ id: AUTH, type: "auth", token }));
  };
  ws.onmessage = (event) => {
    if (!event || typeof event.data !== "string") {
      return;
    }
    const frame = JSON.parse(event.data) as Frame;
    const now = Date.now();
    if (frame.type === "ack") {
      if (frame.id === AUTH) {
        ws.send(JSON.stringify({ id: JOIN, type: "join", channel: options.channel }));
      } else if (frame.id === JOIN) {
        joined = true;
        chatJoinMs.add(now - openedAt);
        sender = setInterval(() => {
          const id = nextId++;
          pending.set(id, Date.now());
          const text = `k6 ${Date.now()} vu${exec.vu.idInTest} says hello`;
          ws.send(JSON.stringify({ id, type: "send", channel: options.channel, body: text }));
        }, options.sendEveryMs);
      } else if (typeof frame.id === "number" && pending.has(frame.id)) {
        chatAckMs.add(now - (pending.get(frame.id) ?? now));
        pending.delete(frame.id);
      }
      chatErrors.add(false);
    } else if (frame.type === "error") {
      if (typeof frame.id === "number") {
        pending.delete(frame.id);
      }
      if (frame.code === "rate_limited") {
        chatRateLimited.add(1);
      } else {
        chatErrors.add(true);
        console.warn(`chat error frame: ${event.data}`);
      }
    } else if (frame.type === "message") {
      chatMessagesReceived.add(1);
      const text = (frame.message as { body?: unknown } | undefined)?.body;
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
  ws.onclose = () => {
    stop();
    clearTimeout(finish);
    chatJoined.add(joined);
  };
}
