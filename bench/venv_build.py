"""Benchmark: how long the agent takes to get a release's venv, by tool and cache state.

Run by a developer (`.venv/bin/python bench/venv_build.py [--runs N]`), not by the tests.
It serves webxample + gunicorn from a local PEP 503 index on 127.0.0.1 (the tests' helper),
then times `ensure_release` end to end, as the agent pays it (interpreter probe, venv,
install, gunicorn check, flush and rename), with:
  - uv (`uv venv` + `uv pip install`) vs `python -m venv` + pip, same index, same spec;
  - a cold cache (fresh agent root per run) and a warm one (shared cache, primed once);
  - an existing buildId: the rollback path, which must run nothing.
Prints the p50 of each in ms and the ratios, all measured in this one run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.pypi import start_webxample_index  # noqa: E402

from apprelease.host.builder import ensure_release  # noqa: E402
from apprelease.host.executor import LocalExecutor  # noqa: E402
from apprelease.host.layout import HostLayout  # noqa: E402
from apprelease.api import identity  # noqa: E402
from apprelease.api.models import HostReleaseSpec, Proxy, ReleaseTemplate, Source  # noqa: E402

UV = str(Path(sys.executable).with_name("uv"))


def spec_for(index_url: str) -> HostReleaseSpec:
    template = ReleaseTemplate(
        version="1.0.0",
        source=Source(requirements=["webxample==1.0.0"], index_url=index_url),
        entrypoint="webxample.app:application",
        user="webxample",
        proxy=Proxy(server_names=["webxample.test"]),
    )
    return HostReleaseSpec(
        **template.model_dump(),
        app="webxample",
        node="bench",
        build_id=identity.build_id(template),
        revision=identity.revision(template),
    )


def p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def timed_build(layout: HostLayout, key: str, spec: HostReleaseSpec, uv: str | None, executor: LocalExecutor) -> float:
    start = time.perf_counter()
    ensure_release(layout, key, spec, executor, uv=uv)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (p50 is reported)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="apprelease-bench-"))
    served = start_webxample_index(work / "pypi", versions=("1.0.0",))
    spec = spec_for(served.url)
    results: dict[tuple[str, str], list[float]] = {}
    try:
        for tool, uv in (("uv", UV), ("pip", None)):
            cold = []
            for i in range(args.runs):
                layout = HostLayout(work / f"cold-{tool}-{i}")  # empty cache every time
                cold.append(timed_build(layout, "bench_app", spec, uv, LocalExecutor()))
            results[(tool, "cold")] = cold

            warm_layout = HostLayout(work / f"warm-{tool}")
            ensure_release(warm_layout, "bench_prime", spec, LocalExecutor(), uv=uv)  # fill the cache
            results[(tool, "warm")] = [
                timed_build(warm_layout, f"bench_{i}", spec, uv, LocalExecutor()) for i in range(args.runs)
            ]

        rollback_layout = HostLayout(work / "warm-uv")
        executor = LocalExecutor()
        served.index.clear_requests()
        rollback = [timed_build(rollback_layout, "bench_prime", spec, UV, executor) for _ in range(50)]
        assert executor.log == [] and served.index.requests == [], "the rollback path ran or downloaded something"
    finally:
        served.stop()
        shutil.rmtree(work)

    print(f"ensure_release for webxample==1.0.0 + gunicorn from a local index, p50 of {args.runs} runs")
    print(f"{'':8}{'uv':>12}{'venv+pip':>12}{'pip/uv':>10}")
    for cache in ("cold", "warm"):
        uv_ms, pip_ms = p50_ms(results[("uv", cache)]), p50_ms(results[("pip", cache)])
        print(f"{cache + ' cache':<8}{uv_ms:>10.0f}ms{pip_ms:>10.0f}ms{pip_ms / uv_ms:>9.1f}x")
    uv_warm = p50_ms(results[("uv", "warm")])
    roll_ms = p50_ms(rollback)
    print(f"existing buildId (rollback path), p50 of 50: {roll_ms:.3f}ms "
          f"({uv_warm / roll_ms:,.0f}x faster than a warm uv build; no command run, no index request)")  # fmt: skip


if __name__ == "__main__":
    main()
