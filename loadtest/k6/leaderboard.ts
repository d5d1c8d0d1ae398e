// leaderboard: score submissions and rank reads on one board made for the run. Matches end at
// RATE per second across the players (each VU is one guest player, signed in once, its access
// token refreshed before it expires); every match submits the player's score, which improves
// with practice (so records keep being beaten and written, not only answered from the index), with
// an Idempotency-Key that a retry reuses, then reads the player's rank; every BROWSE_EVERY-th
// match also reads the top 10 and the records around the player.
//
//   k6 run -e BASE_URL=http://localhost:8080 -e GUILDHALL_ADMIN_KEY=... -e RATE=200 \
//     -e DURATION=2m loadtest/k6/leaderboard.ts

import exec from "k6/execution";
import type { Options } from "k6/options";
import { ensureBoard, envDuration, envNumber, newRunId, player } from "./lib/api.ts";
import { browseBoard, playMatch } from "./lib/flows.ts";

const rate = envNumber("RATE", 50);

export const options: Options = {
  scenarios: {
    matches: {
      executor: "constant-arrival-rate",
      rate,
      timeUnit: "1s",
      duration: envDuration("DURATION", "1m"),
      preAllocatedVUs: envNumber("PLAYERS", Math.max(10, rate)),
      maxVUs: envNumber("PLAYERS", Math.max(10, rate)),
    },
  },
  thresholds: {
    http_req_failed: ["rate<0.01"],
    checks: ["rate>0.99"],
    "http_req_duration{endpoint:submit_score}": ["p(95)<100", "p(99)<250"],
    "http_req_duration{endpoint:my_rank}": ["p(95)<50", "p(99)<150"],
    "http_req_duration{endpoint:top_records}": ["p(95)<100", "p(99)<250"],
    "http_req_duration{endpoint:around_me}": ["p(95)<100", "p(99)<250"],
  },
};

export function setup(): { board: string } {
  const board = `k6-${newRunId()}`;
  ensureBoard(board);
  return { board };
}

// Matches this VU's player has played: their scores improve from one to the next.
let matches = 0;

export default function (data: { board: string }): void {
  const session = player(data.board);
  if (session === null) {
    return;
  }
  playMatch(data.board, session.tokens.access_token, session.who, matches++);
  if (exec.vu.iterationInScenario % envNumber("BROWSE_EVERY", 5) === 0) {
    browseBoard(data.board, session.tokens.access_token);
  }
}
