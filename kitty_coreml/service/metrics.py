"""/metrics in the Prometheus text format (version 0.0.4), written by hand: a handful of figures do not
need a client library."""

from __future__ import annotations

from typing import Any

__all__ = ["render_metrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render_metrics(stats: dict[str, Any], counters: dict[str, float]) -> str:
    from ..jobs import FINAL_STATES, STATES

    lines = ["# HELP kitty_coreml_jobs Jobs the queue holds, by state.", "# TYPE kitty_coreml_jobs gauge"]
    lines += [f'kitty_coreml_jobs{{state="{state}"}} {_number(stats.get(state, 0))}' for state in STATES]
    lines += ["# HELP kitty_coreml_jobs_finished_total Jobs finished since the queue was created, by outcome.",
              "# TYPE kitty_coreml_jobs_finished_total counter"]
    lines += [f'kitty_coreml_jobs_finished_total{{outcome="{state}"}} '
              f'{_number(counters.get(f"jobs_{state}_total", 0))}' for state in FINAL_STATES]
    lines += ["# HELP kitty_coreml_generation_seconds Seconds from engine start to published images, per done job.",
              "# TYPE kitty_coreml_generation_seconds summary",
              f"kitty_coreml_generation_seconds_sum {_number(counters.get('generation_seconds_sum', 0))}",
              f"kitty_coreml_generation_seconds_count {_number(counters.get('generation_seconds_count', 0))}",
              "# HELP kitty_coreml_publish_failures_total Jobs whose images stayed in the outbox (publishing failed).",
              "# TYPE kitty_coreml_publish_failures_total counter",
              f"kitty_coreml_publish_failures_total {_number(counters.get('publish_failures', 0))}",
              "# HELP kitty_coreml_queue_max_jobs Most jobs the queue holds before answering 429.",
              "# TYPE kitty_coreml_queue_max_jobs gauge",
              f"kitty_coreml_queue_max_jobs {_number(stats.get('max_queued', 0))}",
              "# HELP kitty_coreml_workers Workers pulling jobs.",
              "# TYPE kitty_coreml_workers gauge",
              f"kitty_coreml_workers {_number(stats.get('workers', 0))}"]
    return "\n".join(lines) + "\n"
