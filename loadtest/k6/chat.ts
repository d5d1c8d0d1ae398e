// chat: CHATTERS players each hold a WebSocket session of SESSION_SECONDS in one of ROOMS rooms,
// sending a message every SEND_EVERY_MS and receiving everyone else's; when a session ends the
// player reconnects. Measures the send-to-ack time, the send-to-receipt time between players,
// and connect-to-joined.
//
//   k6 run -e BASE_URL=http://localhost:8080 -e CHATTERS=200 -e ROOMS=10 -e DURATION=2m \
//     loadtest/k6/chat.ts

import exec from "k6/execution";
import type { Options } from "k6/options";
import { envDuration, envNumber, newRunId, player } from "./lib/api.ts";
import { chatSession } from "./lib/flows.ts";

export const options: Options = {
  scenarios: {
    chatters: {
      executor: "constant-vus",
      vus: envNumber("CHATTERS", 50),
      duration: envDuration("DURATION", "1m"),
      gracefulStop: "30s",
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
  },
};

export function setup(): { runId: string } {
  return { runId: newRunId() };
}

export default function (data: { runId: string }): void {
  const rooms = envNumber("ROOMS", 5);
  chatSession(player(data.runId).tokens.access_token, {
    channel: `room:k6-${data.runId}-${exec.vu.idInTest % rooms}`,
    seconds: envNumber("SESSION_SECONDS", 30),
    sendEveryMs: envNumber("SEND_EVERY_MS", 2000),
  });
}
