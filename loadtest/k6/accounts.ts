// accounts: sign-in traffic. New guests arrive at RATE per second; each reads its account, renames
// itself, refreshes its tokens (the old refresh token stops working) and logs out. A share of the
// arrivals (REGISTER_SHARE) registers a full account instead, which costs an Argon2id hash.
//
//   k6 run -e BASE_URL=http://localhost:8080 -e RATE=10 -e DURATION=2m loadtest/k6/accounts.ts
//
// Every sign-in counts against RATE_LIMIT_AUTH_PER_IP_PER_MINUTE of the server (30 by default),
// and all of k6's come from one address: raise it on the stack under test (loadtest/README.md).

import http from "k6/http";
import { check } from "k6";
import exec from "k6/execution";
import type { Options } from "k6/options";
import { BASE_URL, envDuration, envNumber, guest, newRunId, params, refresh, register } from "./lib/api.ts";

const rate = envNumber("RATE", 5);

export const options: Options = {
  scenarios: {
    signins: {
      executor: "constant-arrival-rate",
      rate,
      timeUnit: "1s",
      duration: envDuration("DURATION", "1m"),
      preAllocatedVUs: Math.max(5, rate * 2),
      maxVUs: Math.max(20, rate * 10),
    },
  },
  thresholds: {
    http_req_failed: ["rate<0.01"],
    checks: ["rate>0.99"],
    "http_req_duration{endpoint:auth_guest}": ["p(95)<300", "p(99)<800"],
    "http_req_duration{endpoint:auth_register}": ["p(95)<800", "p(99)<1500"],
    "http_req_duration{endpoint:auth_refresh}": ["p(95)<200", "p(99)<500"],
    "http_req_duration{endpoint:me}": ["p(95)<100", "p(99)<250"],
    "http_req_duration{endpoint:me_update}": ["p(95)<150", "p(99)<400"],
  },
};

export function setup(): { runId: string } {
  return { runId: newRunId() };
}

export default function (data: { runId: string }): void {
  const n = exec.scenario.iterationInTest;
  const share = envNumber("REGISTER_SHARE", 0.1);
  let session = Math.random() < share ? register(data.runId, n) : guest(`k6-${data.runId}-device-${n}`);

  const me = http.get(`${BASE_URL}/v1/accounts/me`, params("me", "GET /v1/accounts/me", session.tokens.access_token));
  check(me, { "me: 200": (r) => r.status === 200 });

  const renamed = http.patch(
    `${BASE_URL}/v1/accounts/me`,
    JSON.stringify({ display_name: `Load tester ${n % 1000}` }),
    params("me_update", "PATCH /v1/accounts/me", session.tokens.access_token),
  );
  check(renamed, { "rename: 200": (r) => r.status === 200 });

  session = refresh(session);
  const out = http.post(`${BASE_URL}/v1/auth/logout`, null, params("auth_logout", "POST /v1/auth/logout", session.tokens.access_token));
  check(out, { "logout: 204": (r) => r.status === 204 });
}
