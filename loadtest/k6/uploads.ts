// uploads: players changing their avatar, end to end, at RATE per second: the profile (the current
// avatar), an upload URL, a real PUT of a PNG to whatever URL the API returned (S3's presigned
// URL, moto in compose; Guildhall's own on embedded defaults), completion, the worker's check until
// `ready`, the download, the profile pointed at the new avatar, and the old avatar deleted, so
// that each player keeps one however long the run.
//
//   k6 run -e BASE_URL=http://localhost:8080 \
//     -e RATE=5 -e DURATION=2m loadtest/k6/uploads.ts
//
// UPLOAD_URL_ORIGIN rewrites presigned URLs' origin; compose needs none (BLOB_PUBLIC_ENDPOINT_URL).

import type { Options } from "k6/options";
import { envDuration, envNumber, newRunId, player } from "./lib/api.ts";
import { changeAvatar } from "./lib/flows.ts";

const rate = envNumber("RATE", 2);

export const options: Options = {
  scenarios: {
    avatars: {
      executor: "constant-arrival-rate",
      rate,
      timeUnit: "1s",
      duration: envDuration("DURATION", "1m"),
      preAllocatedVUs: Math.max(5, rate * 4),
      maxVUs: Math.max(20, rate * 20),
    },
  },
  thresholds: {
    http_req_failed: ["rate<0.01"],
    checks: ["rate>0.99"],
    assets_ready: ["rate>0.99"],
    asset_ready_ms: ["p(95)<3000", "p(99)<8000"],
    "http_req_duration{endpoint:upload_create}": ["p(95)<150", "p(99)<400"],
    "http_req_duration{endpoint:blob_put}": ["p(95)<500", "p(99)<1500"],
    "http_req_duration{endpoint:upload_complete}": ["p(95)<200", "p(99)<500"],
    "http_req_duration{endpoint:asset_get}": ["p(95)<100", "p(99)<250"],
    "http_req_duration{endpoint:me_update}": ["p(95)<150", "p(99)<400"],
    "http_req_duration{endpoint:asset_delete}": ["p(95)<200", "p(99)<500"],
  },
};

export function setup(): { runId: string } {
  return { runId: newRunId() };
}

export default function (data: { runId: string }): void {
  const session = player(data.runId);
  if (session !== null) {
    changeAvatar(session.tokens.access_token, envNumber("READY_WAIT_SECONDS", 15));
  }
}
