// Game night: the mix a live game sees on a busy evening, against the whole deployment at once.
//   players   - players arrive (ramping up to PLAYERS_PER_SECOND and back down); each signs in
//               (a share registers, the rest are returning guests), plays MATCHES matches
//               (submit a score, read the rank, look at the board between matches, with think
//               time), and sometimes checks their profile
//   chatters  - CHATTERS players in chat rooms throughout, talking and listening
//   avatars   - AVATARS_PER_SECOND players upload a new avatar (a real PUT of a PNG) and wait
//               for it to be checked
// Each scenario has its own thresholds; the run fails if any is crossed.
//
//   k6 run -e BASE_URL=http://localhost:8080 -e GUILDHALL_ADMIN_KEY=... \
//     -e DURATION=5m loadtest/k6/game-night.ts

import http from "k6/http";
import { check, sleep } from "k6";
import exec from "k6/execution";
import type { Options } from "k6/options";
import { BASE_URL, ensureBoard, envDuration, envNumber, guest, newRunId, params, player, register } from "./lib/api.ts";
import { browseBoard, chatSession, playMatch, uploadAvatar } from "./lib/flows.ts";

const duration = envDuration("DURATION", "3m");
const arrivals = envNumber("PLAYERS_PER_SECOND", 5);

export const options: Options = {
  scenarios: {
    players: {
      executor: "ramping-arrival-rate",
      exec: "play",
      startRate: 0,
      timeUnit: "1s",
      preAllocatedVUs: Math.max(20, arrivals * 20),
      maxVUs: Math.max(100, arrivals * 60),
      stages: [
        { target: arrivals, duration: "30s" },
        { target: arrivals, duration },
        { target: 0, duration: "30s" },
      ],
    },
    chatters: {
      executor: "constant-vus",
      exec: "chat",
      vus: envNumber("CHATTERS", 50),
      duration: envDuration("CHAT_DURATION", "4m"),
      gracefulStop: "30s",
    },
    avatars: {
      executor: "constant-arrival-rate",
      exec: "avatar",
      rate: envNumber("AVATARS_PER_SECOND", 1),
      timeUnit: "1s",
      duration: envDuration("AVATAR_DURATION", "4m"),
      preAllocatedVUs: 5,
      maxVUs: 50,
    },
  },
  thresholds: {
    "http_req_failed{scenario:players}": ["rate<0.01"],
    "http_req_failed{scenario:avatars}": ["rate<0.01"],
    "checks{scenario:players}": ["rate>0.99"],
    "checks{scenario:avatars}": ["rate>0.99"],
    "http_req_duration{scenario:players}": ["p(95)<200", "p(99)<600"],
    "http_req_duration{endpoint:submit_score}": ["p(95)<100", "p(99)<250"],
    "http_req_duration{endpoint:my_rank}": ["p(95)<50", "p(99)<150"],
    "http_req_duration{endpoint:auth_guest}": ["p(95)<300", "p(99)<800"],
    chat_joined: ["rate>0.99"],
    chat_errors: ["rate<0.01"],
    chat_ack_ms: ["p(95)<100", "p(99)<250"],
    chat_delivery_ms: ["p(95)<150", "p(99)<400"],
    assets_ready: ["rate>0.99"],
    asset_ready_ms: ["p(95)<3000", "p(99)<8000"],
  },
};

interface Night {
  runId: string;
  board: string;
}

export function setup(): Night {
  const runId = newRunId();
  const board = `k6-night-${runId}`;
  ensureBoard(board);
  return { runId, board };
}

/** One player's evening: sign in, a few matches with a look at the board, maybe the profile. */
export function play(night: Night): void {
  const n = exec.scenario.iterationInTest;
  // Returning players come back as the same guests (a pool of RETURNING devices); some are new.
  const fresh = Math.random() < envNumber("REGISTER_SHARE", 0.05);
  const session = fresh
    ? register(night.runId, n)
    : guest(`k6-${night.runId}-player-${n % envNumber("RETURNING", 5000)}`);
  const token = session.tokens.access_token;
  const matches = envNumber("MATCHES", 3);
  for (let match = 0; match < matches; match++) {
    sleep(envNumber("THINK_SECONDS", 2) * (0.5 + Math.random()));
    playMatch(night.board, token);
    if (Math.random() < 0.3) {
      browseBoard(night.board, token);
    }
  }
  if (Math.random() < 0.2) {
    const me = http.get(`${BASE_URL}/v1/accounts/me`, params("me", "GET /v1/accounts/me", token));
    check(me, { "me: 200": (r) => r.status === 200 });
  }
}

/** A player in chat for the night, reconnecting after each session. */
export function chat(night: Night): void {
  const rooms = envNumber("ROOMS", 5);
  chatSession(player(night.runId).tokens.access_token, {
    channel: `room:k6-${night.runId}-${exec.vu.idInTest % rooms}`,
    seconds: envNumber("SESSION_SECONDS", 60),
    sendEveryMs: envNumber("SEND_EVERY_MS", 3000),
  });
}

/** A player (a different guest each time) changing their avatar. */
export function avatar(night: Night): void {
  uploadAvatar(guest(`k6-${night.runId}-avatar-${exec.scenario.iterationInTest}`).tokens.access_token);
}
