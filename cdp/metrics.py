"""Prometheus metrics of every process in one exposition: the serving process's own, and
those of the workers it runs in processes of their own (the profile worker, the audience
worker), which write theirs to files (prometheus_client's multiprocess mode) in
`<data_dir>/metrics`, emptied when the server starts. `/metrics` shows them summed by
labels: a worker restarted goes on counting from where its predecessor stopped."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from cdp.settings import Settings

# The variable prometheus_client reads, at import, in a worker process.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def worker_metrics_dir(settings: Settings) -> Path:
    return settings.data_dir / "metrics"


def reset_worker_metrics(settings: Settings) -> Path:
    """An empty directory for the workers' metrics (the last run's are not ours)."""
    found = worker_metrics_dir(settings)
    shutil.rmtree(found, ignore_errors=True)
    found.mkdir(parents=True)
    return found


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def exposition(workers: Path | None) -> bytes:
    """This process's metrics and, from `workers` (a metrics directory), the worker
    processes', families of one name merged (their samples summed by labels)."""
    families = {family.name: family for family in REGISTRY.collect()}
    if workers is not None and workers.is_dir():
        theirs = MultiProcessCollector(None, path=str(workers))  # type: ignore[no-untyped-call]
        for family in theirs.collect():  # type: ignore[no-untyped-call]
            mine = families.get(family.name)
            families[family.name] = family if mine is None else _summed(mine, family)
    return generate_latest(_Families(families.values()))


def _summed(mine: Metric, theirs: Metric) -> Metric:
    totals: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for sample in [*mine.samples, *theirs.samples]:
        if sample.name.endswith("_created"):  # a moment, not a count: workers write none
            continue
        key = (sample.name, tuple(sorted(sample.labels.items())))  # in any order written
        totals[key] = totals.get(key, 0.0) + sample.value
    merged = Metric(mine.name, mine.documentation, mine.type)
    for (name, labels), value in totals.items():
        merged.add_sample(name, dict(labels), value)
    return merged
