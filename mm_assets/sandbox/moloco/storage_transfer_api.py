"""The few Storage Transfer API calls MCM-STS uses, over REST, as the official client sends them
(`transport="rest"`, proto JSON, camelCase):

* `GET  /v1/googleServiceAccounts/{projectId}` -> the project's transfer service agent;
* `GET  /v1/transferJobs/{job}?projectId=` -> the job, or 404 NOT_FOUND;
* `POST /v1/transferJobs` -> create (403 PERMISSION_DENIED when the agent may not read the
  source bucket, as the real service checks at creation);
* `POST /v1/transferJobs/{job}:run` -> a long-running operation `transferOperations/...`;
* `GET  /v1/transferOperations/{op}` -> the operation: not done for `polls_until_done` polls
  (counters growing), then done, after copying the objects between buckets of the GCS emulator.
"""

from __future__ import annotations

import json
import secrets
import threading
from typing import Any

from werkzeug.wrappers import Request, Response

from mm_assets.sandbox.moloco import WsgiStandIn
from mm_assets.sandbox.moloco.gcs_emulator import GcsEmulator

_OP_TYPE = "type.googleapis.com/google.storagetransfer.v1.TransferOperation"


def _json(data: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(data), status, content_type="application/json")


def _error(status: int, code: str, message: str) -> Response:
    return _json({"error": {"code": status, "status": code, "message": message}}, status)


class StorageTransferStandIn(WsgiStandIn):
    def __init__(
        self,
        gcs: GcsEmulator,
        project_id: str,
        project_number: str = "123456789012",
        *,
        agent_can_read: bool = True,
        polls_until_done: int = 2,
    ) -> None:
        self.gcs = gcs
        self.project_id = project_id
        self.agent = f"project-{project_number}@storage-transfer-service.iam.gserviceaccount.com"
        self.agent_can_read = agent_can_read
        self.polls_until_done = polls_until_done
        self.jobs: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self._lock = threading.Lock()
        self._serve()

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        with self._lock:
            self.requests.append((request.method, request.path))
            resp = self._route(request)
        return resp(environ, start_response)

    def _route(self, request: Request) -> Response:
        path, method = request.path, request.method
        if method == "GET" and path.startswith("/v1/googleServiceAccounts/"):
            return _json({"accountEmail": self.agent, "subjectId": "1234567890"})
        if method == "POST" and path == "/v1/transferJobs":
            return self._create(json.loads(request.get_data() or b"{}"))
        if method == "POST" and path.startswith("/v1/transferJobs/") and path.endswith(":run"):
            return self._run(path[len("/v1/") : -len(":run")])
        if method == "GET" and path.startswith("/v1/transferJobs/"):
            job = self.jobs.get(path[len("/v1/") :])
            if job is None or request.args.get("projectId") != self.project_id:
                return _error(404, "NOT_FOUND", "transfer job not found")
            return _json(job)
        if method == "GET" and path.startswith("/v1/transferOperations/"):
            return self._poll(path[len("/v1/") :])
        return _error(404, "NOT_FOUND", f"{method} {path}")

    def _create(self, job: dict[str, Any]) -> Response:
        if job.get("projectId") != self.project_id:
            return _error(403, "PERMISSION_DENIED", "caller may not use this project")
        if job["name"] in self.jobs:
            return _error(409, "ALREADY_EXISTS", "job exists")
        source = job["transferSpec"]["gcsDataSource"]["bucketName"]
        if not self.agent_can_read:
            return _error(
                403,
                "PERMISSION_DENIED",
                f"Failed to obtain the location of the GCS bucket {source}: "
                f"{self.agent} does not have storage.buckets.get access",
            )
        self.jobs[job["name"]] = job
        return _json(job)

    def _run(self, job_name: str) -> Response:
        job = self.jobs.get(job_name)
        if job is None:
            return _error(404, "NOT_FOUND", "transfer job not found")
        name = f"transferOperations/transferJobs-{secrets.token_hex(6)}"
        self.operations[name] = {"job": job, "polls": 0}
        return _json(self._operation(name))

    def _poll(self, name: str) -> Response:
        op = self.operations.get(name)
        if op is None:
            return _error(404, "NOT_FOUND", "operation not found")
        op["polls"] += 1
        if op["polls"] >= self.polls_until_done and "copied" not in op:
            op["copied"] = self._copy(op["job"])
        return _json(self._operation(name))

    def _copy(self, job: dict[str, Any]) -> tuple[int, int]:
        spec = job["transferSpec"]
        src, dst = spec["gcsDataSource"], spec["gcsDataSink"]
        client = self.gcs.admin_client()
        count = size = 0
        for blob in client.list_blobs(src["bucketName"], prefix=src.get("path", "")):
            name = dst.get("path", "") + blob.name[len(src.get("path", "")) :]
            data = blob.download_as_bytes()
            client.bucket(dst["bucketName"]).blob(name).upload_from_string(data)
            count, size = count + 1, size + len(data)
        return count, size

    def _operation(self, name: str) -> dict[str, Any]:
        op = self.operations[name]
        found = op.get("copied", (0, 0))
        done = "copied" in op
        result: dict[str, Any] = {
            "name": name,
            "metadata": {
                "@type": _OP_TYPE,
                "name": name,
                "projectId": self.project_id,
                "transferJobName": op["job"]["name"],
                "status": "SUCCESS" if done else "IN_PROGRESS",
                "counters": {
                    "objectsFoundFromSource": str(found[0]),
                    "objectsCopiedToSink": str(found[0]),
                    "bytesCopiedToSink": str(found[1]),
                },
            },
            "done": done,
        }
        if done:
            result["response"] = {"@type": "type.googleapis.com/google.protobuf.Empty"}
        return result
