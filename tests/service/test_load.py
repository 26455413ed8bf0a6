"""500 submissions from 50 concurrent clients against a bounded queue: each is accepted (200, as KITTY answers) or refused
(429), none is lost, and every accepted job finishes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.proc_utils import wait_until


def test_500_submissions_from_50_clients_lose_nothing(mock_env, service_factory):
    service = service_factory({**mock_env, "KITTY_COREML_QUEUE_MAX": "40"})

    def one_client(number: int) -> list[tuple[int, str | None]]:
        answers = []
        with httpx.Client(base_url=service.url, timeout=60) as http:
            for i in range(10):
                answer = http.post("/api/images/generate",
                                   json={"prompt": f"client {number} request {i}", "width": 64, "height": 64})
                answers.append((answer.status_code, answer.json().get("job_id")))
        return answers

    with ThreadPoolExecutor(50) as pool:
        answers = [a for batch in pool.map(one_client, range(50)) for a in batch]
    assert len(answers) == 500
    assert {code for code, _ in answers} <= {200, 429}
    accepted = [job_id for code, job_id in answers if code == 200]
    refused = [code for code, _ in answers if code == 429]
    assert accepted and refused  # the bound was reached and the queue kept taking work
    assert len(set(accepted)) == len(accepted)
    with service.client() as client:
        wait_until(lambda: client.get("/api/images/stats").json()["finished"] == len(accepted), 120,
                   "every accepted job to finish")
        stats = client.get("/api/images/stats").json()
        assert (stats["queued"], stats["started"], stats["failed"], stats["cancelled"]) == (0, 0, 0, 0)
        for job_id in accepted[:: max(1, len(accepted) // 20)]:
            job = client.get(f"/api/images/jobs/{job_id}").json()
            assert job["status"] == "finished" and job["result"]["png_key"]
        listed = client.get("/api/images/latest", params={"limit": 1000}).json()["items"]
        assert len(listed) == len(accepted)
