// Game night: the mix a live game sees on a busy evening, against the whole deployment at once.
// Every scenario runs for DURATION, the length of the night:
//   players   - players arrive (ramping up to PLAYERS_PER_SECOND over the first RAMP, down over
//               the last); each signs in as a returning guest, a new registration
//               (REGISTER_SHARE), or a returning account holder (ACCOUNT_SHARE: their kept
//               session resumed with its refresh token, or, after they logged out, their email and
//               password), plays MATCHES matches with think time (scores that improve with each
//               match the player has played, submitted with an Idempotency-Key) and a look at the
//               board, sometimes checks their profile, and leaves (account holders log out with
//               LOGOUT_SHARE, otherwise they keep their session for next time)
//   chatters  - CHATTERS players in chat rooms all night, talking and listening, reconnecting
//               every SESSION_SECONDS or so with a fresh token when theirs is about to expire
//   avatars   - AVATARS_PER_SECOND players change their avatar (a real PUT of a PNG), wait for
//               it to be checked, and delete the one it replaced
// Each scenario has its own thresholds; the run fails if any is crossed.
//
//   k6 run -e BASE_URL=http://localhost:8080 -e GUILDHALL_ADMIN_KEY=... \
//     -e DURATION=5m loadtest/k6/game-night.ts

import http from "k6/http";
import { check, sleep } from "k6";
import exec from "k6/execution";
import type { Options } from "k6/options";
import type { Account, Session } from "./lib/api.ts";
import {
  BASE_URL,
  comeBack,
  durationSeconds,
  ensureBoard,
  envDuration,
  envNumber,
  guest,
  logout,
  newRunId,
  params,
  player,
  register,
  returningAccount,
  secondsLeft,
} from "./lib/api.ts";
import { browseBoard, changeAvatar, chatTurn, pause, playMatch } from "./lib/flows.ts";

const duration = envDuration("DURATION", "3m");
const nightSeconds = durationSeconds(duration);
const arrivals = envNumber("PLAYERS_PER_SECOND", 5);
// Ramps of RAMP (30s), but never more than a sixth of the night each.
const rampSeconds = Math.min(durationSeconds(envDuration("RAMP", "30s")), nightSeconds / 6);

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
        { target: arrivals, duration: `${rampSeconds}s` },
        { target: arrivals, duration: `${nightSeconds - 2 * rampSeconds}s` },
        { target: 0, duration: `${rampSeconds}s` },
      ],
    },
    chatters: {
      executor: "constant-vus",
      exec: "chat",
      vus: envNumber("CHATTERS", 50),
      duration,
      // Sessions end with the night (chatTurn); this only covers the closing handshakes.
      gracefulStop: "10s",
    },
    avatars: {
      executor: "constant-arrival-rate",
      exec: "avatar",
      rate: envNumber("AVATARS_PER_SECOND", 1),
      timeUnit: "1s",
      duration,
      preAllocatedVUs: 5,
      maxVUs: 50,
    },
  },
  thresholds: {
    "http_req_failed{scenario:players}": ["rate<0.01"],
    "http_req_failed{scenario:chatters}": ["rate<0.01"],
    "http_req_failed{scenario:avatars}": ["rate<0.01"],
    "checks{scenario:players}": ["rate>0.99"],
    "checks{scenario:chatters}": ["rate>0.99"],
    "checks{scenario:avatars}": ["rate>0.99"],
    "http_req_duration{scenario:players}": ["p(95)<200", "p(99)<600"],
    "http_req_duration{endpoint:submit_score}": ["p(95)<100", "p(99)<250"],
    "http_req_duration{endpoint:my_rank}": ["p(95)<50", "p(99)<150"],
    "http_req_duration{endpoint:auth_guest}": ["p(95)<300", "p(99)<800"],
    "http_req_duration{endpoint:auth_login}": ["p(95)<800", "p(99)<1500"],
    "http_req_duration{endpoint:auth_refresh}": ["p(95)<200", "p(99)<500"],
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

/** A guest of the pool of RETURNING devices that come back night after night. */
function returningGuest(runId: string, device: number): Session | null {
  return guest(`k6-${runId}-player-${device}`);
}

/**
 * Who arrives: a new registration, a returning account holder, or (most) a returning guest.
 * `matches` is how many matches the player has played before tonight's visit.
 */
function arrive(night: Night, n: number): { session: Session | null; account: Account | null; matches: number } {
  const roll = Math.random();
  const registerShare = envNumber("REGISTER_SHARE", 0.05);
  if (roll < registerShare + envNumber("ACCOUNT_SHARE", 0.15)) {
    const returning = roll >= registerShare ? returningAccount() : null;
    if (returning !== null) {
      return { session: comeBack(returning), account: returning, matches: returning.matches };
    }
    const created = register(night.runId);
    return { session: created?.session ?? null, account: created?.account ?? null, matches: 0 };
  }
  const pool = envNumber("RETURNING", 5000);
  // The device's visits so far (the pool is walked in order) times the matches of each.
  return { session: returningGuest(night.runId, n % pool), account: null, matches: Math.floor(n / pool) * envNumber("MATCHES", 3) };
}

/** One player's evening: sign in, a few matches with a look at the board, maybe the profile. */
export function play(night: Night): void {
  const visitor = arrive(night, exec.scenario.iterationInTest);
  const session = visitor.session;
  if (session === null) {
    return;
  }
  const token = session.tokens.access_token;
  const matches = envNumber("MATCHES", 3);
  for (let match = 0; match < matches; match++) {
    sleep(envNumber("THINK_SECONDS", 2) * (0.5 + Math.random()));
    playMatch(night.board, token, session.who, visitor.matches + match);
    if (Math.random() < 0.3) {
      browseBoard(night.board, token);
    }
  }
  if (Math.random() < 0.2) {
    const me = http.get(`${BASE_URL}/v1/accounts/me`, params("me", "GET /v1/accounts/me", token));
    check(me, { "me: 200": (r) => r.status === 200 });
  }
  if (visitor.account !== null) {
    visitor.account.matches = visitor.matches + matches;
    if (Math.random() < envNumber("LOGOUT_SHARE", 0.5)) {
      logout(session);
    } else {
      visitor.account.kept = session;
    }
  }
}

/** A player in chat for the whole night, reconnecting after each session. */
export async function chat(night: Night): Promise<void> {
  if (exec.vu.iterationInScenario === 0) {
    // Players come online over the first seconds, not all in the same instant.
    await pause(Math.random() * Math.min(10, nightSeconds / 6));
  }
  const left = secondsLeft(nightSeconds);
  const session = player(night.runId);
  if (session === null) {
    await pause(Math.min(2, left));
    return;
  }
  await chatTurn(session.tokens.access_token, left, envNumber("SESSION_SECONDS", 60), {
    channel: `room:k6-${night.runId}-${exec.vu.idInTest % envNumber("ROOMS", 5)}`,
    sendEveryMs: envNumber("SEND_EVERY_MS", 3000),
  });
}

/** One of the returning guests changing their avatar. */
export function avatar(night: Night): void {
  const session = returningGuest(night.runId, Math.floor(Math.random() * envNumber("RETURNING", 5000)));
  if (session !== null) {
    changeAvatar(session.tokens.access_token);
  }
}
