"""Benchmark: how long the agent takes to get a release's venv, by tool and cache state.

Run by a developer (`.venv/bin/python bench/venv_build.py [--runs N]`), not by the tests.
It serves webxample + gunicorn from a local PEP 503 index on 127.0.0.1 (the tests' helper),
then times `ensure_release` end to end, as the agent pays it (interpreter probe, venv,
install, gunicorn check, flush and rename), with:
  - uv (`uv venv` + `uv pip install`) vs `python -m venv` + pip, same index, same spec;
  - a cold cache (fresh agent root per run) and a warm one (the app's own cache, primed by
    a first build of the same app: caches are per app, see host/sandbox.py);
  - the build sandbox's cost: the same warm uv build with the sandbox switched off in this
    process (commands run as root, files hardlinked from the cache, no sealing chown) — the
    builder as it was before builds ran as a build user;
  - an existing buildId: the rollback path, which must run nothing.
Prints the p50 of each in ms and the ratios, all measured in this one run.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.pypi import start_webxample_index  # noqa: E402

from apprelease.host import builder  # noqa: E402
from apprelease.host.builder import ensure_release, remove_release  # noqa: E402
from apprelease.host.executor import LocalExecutor  # noqa: E402
from apprelease.host.layout import HostLayout  # noqa: E402
from apprelease.host.users import ensure_build_user  # noqa: E402
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


BUILDER = ensure_build_user("bench", "app")


def timed_build(layout: HostLayout, key: str, spec: HostReleaseSpec, uv: str | None, executor: LocalExecutor) -> float:
    start = time.perf_counter()
    ensure_release(layout, key, spec, executor, uv=uv, identity=BUILDER)
    return time.perf_counter() - start


def warm_builds(layouts: dict[str, HostLayout], spec: HostReleaseSpec, uv: str | None, runs: int) -> dict[str, list[float]]:
    """The same app built again and again with its cache primed (the release removed in between).

    Several variants (e.g. with and without the sandbox) are interleaved run by run, so a
    noisy neighbour slows them alike instead of skewing whichever ran at the time.
    """
    for variant, layout in layouts.items():
        with variant_mode(variant):
            ensure_release(layout, "bench_app", spec, LocalExecutor(), uv=uv, identity=BUILDER)
    samples: dict[str, list[float]] = {variant: [] for variant in layouts}
    for _ in range(runs):
        for variant, layout in layouts.items():
            with variant_mode(variant):
                remove_release(layout.app("bench_app"), spec.build_id)
                samples[variant].append(timed_build(layout, "bench_app", spec, uv, LocalExecutor()))
    return samples


def variant_mode(variant: str):
    return sandbox_off() if variant == "unsandboxed" else contextlib.nullcontext()


@contextlib.contextmanager
def sandbox_off():
    """The builder as it was before the sandbox: root runs the commands, hardlinks, no chown pass."""
    saved = builder.confine, builder.seal, builder.install_command

    def hardlinking_install(*args, **kwargs):
        argv = saved[2](*args, **kwargs)
        i = argv.index("--link-mode") if "--link-mode" in argv else None
        return argv if i is None else argv[:i] + argv[i + 2:]

    builder.confine = lambda argv, identity, visible=(): list(argv)
    builder.seal = builder.normalize_modes
    builder.install_command = hardlinking_install
    try:
        yield
    finally:
        builder.confine, builder.seal, builder.install_command = saved


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

            variants = {"warm": HostLayout(work / f"warm-{tool}")}
            if tool == "uv":
                variants["unsandboxed"] = HostLayout(work / "unsandboxed")
            for variant, samples in warm_builds(variants, spec, uv, args.runs).items():
                results[(tool, variant)] = samples

        rollback_layout = HostLayout(work / "warm-uv")
        executor = LocalExecutor()
        served.index.clear_requests()
        rollback = [timed_build(rollback_layout, "bench_app", spec, UV, executor) for _ in range(50)]
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
    bare = p50_ms(results[("uv", "unsandboxed")])
    print(f"build sandbox (build user, PID + mount namespaces, copies, sealing): warm uv {uv_warm:.0f}ms "
          f"vs {bare:.0f}ms without it: {uv_warm / bare:.2f}x ({(uv_warm / bare - 1) * 100:+.0f}%)")
    roll_ms = p50_ms(rollback)
    print(f"existing buildId (rollback path), p50 of 50: {roll_ms:.3f}ms "
          f"({uv_warm / roll_ms:,.0f}x faster than a warm uv build; no command run, no index request)")  # fmt: skip


if __name__ == "__main__":
    main()
