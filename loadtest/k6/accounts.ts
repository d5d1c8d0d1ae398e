// accounts: sign-in traffic. Players arrive at RATE per second, of three kinds:
//   - new players who register a full account with an email and a password (REGISTER_SHARE,
//     0.1: an Argon2id hash on the server);
//   - returning account holders who sign in with that email and password (LOGIN_SHARE, 0.2:
//     another hash), among the accounts this VU registered earlier, each at most
//     LOGINS_PER_ACCOUNT times in 15 minutes (the server limits sign-ins per account); until the
//     VU has such an account, the arrival registers one instead;
//   - new guests (the rest).
// Each then reads its account, renames itself, refreshes its tokens (the refresh token rotates:
// the old one stops working) and logs out, so a returning account holder needs the password.
//
//   k6 run -e BASE_URL=http://localhost:8080 -e RATE=10 -e DURATION=2m loadtest/k6/accounts.ts
//
// Every sign-in counts against RATE_LIMIT_AUTH_PER_IP_PER_MINUTE of the server (30 by default),
// and all of k6's come from one address: raise it on the stack under test (loadtest/README.md).

import http from "k6/http";
import { check } from "k6";
import exec from "k6/execution";
import type { Options } from "k6/options";
import type { Session } from "./lib/api.ts";
import {
  BASE_URL,
  envDuration,
  envNumber,
  guest,
  login,
  logout,
  newRunId,
  params,
  refresh,
  register,
  returningAccount,
} from "./lib/api.ts";

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
    "http_req_duration{endpoint:auth_login}": ["p(95)<800", "p(99)<1500"],
    "http_req_duration{endpoint:auth_refresh}": ["p(95)<200", "p(99)<500"],
    "http_req_duration{endpoint:auth_logout}": ["p(95)<200", "p(99)<500"],
    "http_req_duration{endpoint:me}": ["p(95)<100", "p(99)<250"],
    "http_req_duration{endpoint:me_update}": ["p(95)<150", "p(99)<400"],
  },
};

export function setup(): { runId: string } {
  return { runId: newRunId() };
}

/** The arriving player's session: a new registration, a password sign-in, or a new guest. */
function arrive(runId: string, n: number): Session | null {
  const roll = Math.random();
  const registerShare = envNumber("REGISTER_SHARE", 0.1);
  if (roll < registerShare + envNumber("LOGIN_SHARE", 0.2)) {
    const account = roll >= registerShare ? returningAccount() : null;
    return account !== null ? login(account) : (register(runId)?.session ?? null);
  }
  return guest(`k6-${runId}-device-${n}`);
}

export default function (data: { runId: string }): void {
  const n = exec.scenario.iterationInTest;
  let session = arrive(data.runId, n);
  if (session === null) {
    return;
  }

  const me = http.get(`${BASE_URL}/v1/accounts/me`, params("me", "GET /v1/accounts/me", session.tokens.access_token));
  check(me, { "me: 200": (r) => r.status === 200 });

  const renamed = http.patch(
    `${BASE_URL}/v1/accounts/me`,
    JSON.stringify({ display_name: `Load tester ${n % 1000}` }),
    params("me_update", "PATCH /v1/accounts/me", session.tokens.access_token),
  );
  check(renamed, { "rename: 200": (r) => r.status === 200 });

  session = refresh(session);
  if (session !== null) {
    logout(session);
  }
}
