"""/metrics read by prometheus_client's own parser of the text format 0.0.4, as Prometheus scrapes it."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from .conftest import wait_job


def test_metrics_parse_with_prometheus_clients_parser(mock_service):
    with mock_service.client() as client:
        wait_job(client, client.post("/api/images/generate", json={"prompt": "a red cube"}).json()["job_id"])
        stats = client.get("/api/images/stats").json()
        text = client.get("/metrics").text

    families = {family.name: family for family in text_string_to_metric_families(text)}
    types = {name: family.type for name, family in families.items()}
    assert types == {"kitty_coreml_jobs": "gauge", "kitty_coreml_jobs_finished": "counter",
                     "kitty_coreml_generation_seconds": "summary", "kitty_coreml_publish_failures": "counter",
                     "kitty_coreml_queue_max_jobs": "gauge", "kitty_coreml_workers": "gauge"}
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in families.values() for sample in family.samples}
    assert samples[("kitty_coreml_jobs", (("state", "finished"),))] == stats["finished"] == 1
    assert samples[("kitty_coreml_jobs_finished_total", (("outcome", "finished"),))] == 1
    assert samples[("kitty_coreml_generation_seconds_count", ())] == 1
    assert samples[("kitty_coreml_generation_seconds_sum", ())] > 0
    assert samples[("kitty_coreml_queue_max_jobs", ())] == stats["max_queued"]
    assert samples[("kitty_coreml_workers", ())] == stats["workers"]
    assert all(family.documentation for family in families.values())
