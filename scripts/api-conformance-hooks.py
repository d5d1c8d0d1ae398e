"""schemathesis hooks for scripts/api-conformance.sh: credentials for the operations that need them.

Players' operations get a guest's access token, one for the whole run, except the two that end the
session they are called with (logout, account deletion): those get a fresh guest each time, or
every later case would be refused 401. The admin API gets the server key the script started the
server with. The token is made through the API itself, as a game client would.
"""

import os
import uuid

import requests
import schemathesis

BASE_URL = os.environ["GUILDHALL_URL"]
ADMIN_KEY = os.environ["GUILDHALL_ADMIN_KEY"]
ENDS_SESSION = {("POST", "/v1/auth/logout"), ("DELETE", "/v1/accounts/me")}


def guest_token() -> str:
    response = requests.post(f"{BASE_URL}/v1/auth/guest", json={"device_id": f"conformance-{uuid.uuid4()}"}, timeout=10)
    response.raise_for_status()
    return response.json()["access_token"]


@schemathesis.auth()
class GuildhallAuth:
    def get(self, case, context):
        return guest_token()

    def set(self, case, data, context):
        operation = (case.operation.method.upper(), case.operation.path)
        if case.operation.path.startswith("/v1/admin/"):
            token = ADMIN_KEY
        elif operation in ENDS_SESSION:
            token = guest_token()
        else:
            token = data
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {token}"
