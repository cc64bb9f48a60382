"""The `apprelease` command: wiring only; the work lives in the api/, host/, agent/ and controller/ layers.

    apprelease crds [--out DIR] [--check]       write (or check) crds/*.yaml from the models
    apprelease validate -f FILE                 validate AppRelease/HostRelease manifests
    apprelease agent reconcile -f FILE --root DIR
    apprelease agent status --root DIR
    apprelease operator [--kubeconfig K] [--namespace NS | --all-namespaces]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .agent import cli as agent_cli
from .api import crdgen
from .controller import cli as controller_cli


def _cmd_crds(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.check:
        stale = [name for name, crd in crdgen.crds().items()
                 if not (out / name).exists() or (out / name).read_text() != crdgen.render(crd)]
        if stale:
            print(f"stale CRDs in {out}: {', '.join(stale)}; run `make crds`", file=sys.stderr)
            return 1
        print(f"{out}: up to date")
        return 0
    for path in crdgen.write(out):
        print(f"wrote {path}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .api.manifests import ManifestError, load_resources

    try:
        resources = load_resources(Path(args.file).read_text())
    except ManifestError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 1
    for res in resources:
        print(f"{res.kind}/{res.metadata.name}: valid")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apprelease", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    crds = sub.add_parser("crds", help="generate crds/*.yaml from the pydantic models")
    crds.add_argument("--out", default="crds")
    crds.add_argument("--check", action="store_true", help="fail if the files differ from the models")
    crds.set_defaults(func=_cmd_crds)

    validate = sub.add_parser("validate", help="validate AppRelease/HostRelease manifests")
    validate.add_argument("-f", "--file", required=True)
    validate.set_defaults(func=_cmd_validate)

    agent_cli.register(sub)
    controller_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
