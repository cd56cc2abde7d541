"""errands' metrics for Prometheus: mounted in the app, counted in each process that
runs jobs, read from the store for the gauges."""

from fastapi import FastAPI

from errands import Errands

errands = Errands()  # errands.db
app = FastAPI(lifespan=errands.lifespan)
app.mount("/metrics", errands.metrics())  # scrape http://host:8000/metrics/


@errands.task(name="reports.build", retries=2, timeout=600)
def build_report(month: str) -> str:
    return f"report for {month}"
