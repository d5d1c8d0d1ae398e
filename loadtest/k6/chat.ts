// chat: CHATTERS players each hold WebSocket sessions of about SESSION_SECONDS in one of ROOMS
// rooms for the whole run: each session reads the room's recent history, connects, joins, talks
// (a message every SEND_EVERY_MS on average, sometimes typing first) and listens to everyone
// else; when it ends the player reconnects, with a fresh access token when theirs is about to
// expire. Measures the send-to-ack time, the send-to-receipt time between players, and
// connect-to-joined.
//
//   k6 run -e BASE_URL=http://localhost:8080 -e CHATTERS=200 -e ROOMS=10 -e DURATION=2m \
//     loadtest/k6/chat.ts

import exec from "k6/execution";
import type { Options } from "k6/options";
import { durationSeconds, envDuration, envNumber, newRunId, player, secondsLeft } from "./lib/api.ts";
import { chatTurn, pause } from "./lib/flows.ts";

const duration = envDuration("DURATION", "1m");

export const options: Options = {
  scenarios: {
    chatters: {
      executor: "constant-vus",
      vus: envNumber("CHATTERS", 50),
      duration,
      // Sessions end with the scenario (chatTurn); this only covers the closing handshakes.
      gracefulStop: "10s",
    },
  },
  thresholds: {
    http_req_failed: ["rate<0.01"],
    checks: ["rate>0.99"],
    chat_joined: ["rate>0.99"],
    chat_errors: ["rate<0.01"],
    chat_join_ms: ["p(95)<500", "p(99)<1000"],
    chat_ack_ms: ["p(95)<100", "p(99)<250"],
    chat_delivery_ms: ["p(95)<150", "p(99)<400"],
    "http_req_duration{endpoint:chat_history}": ["p(95)<100", "p(99)<250"],
  },
};

export function setup(): { runId: string } {
  return { runId: newRunId() };
}

export default async function (data: { runId: string }): Promise<void> {
  const total = durationSeconds(duration);
  if (exec.vu.iterationInScenario === 0) {
    // Players come online over the first seconds, not all in the same instant.
    await pause(Math.random() * Math.min(10, total / 6));
  }
  const left = secondsLeft(total);
  const session = player(data.runId);
  if (session === null) {
    await pause(Math.min(2, left));
    return;
  }
  await chatTurn(session.tokens.access_token, left, envNumber("SESSION_SECONDS", 30), {
    channel: `room:k6-${data.runId}-${exec.vu.idInTest % envNumber("ROOMS", 5)}`,
    sendEveryMs: envNumber("SEND_EVERY_MS", 2000),
  });
}
