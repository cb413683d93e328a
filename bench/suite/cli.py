"""``python -m bench``: run the standard scenarios against one or two targets.

Examples::

    python -m bench --with-pacs                            # a private archive of this repo
    python -m bench --target mine=PACS@10.0.0.5:11112,web=http://10.0.0.5:8042/dicom-web \
        --move-dest BENCHDST:11199                         # that archive must know BENCHDST
    python -m bench --with-pacs --with-orthanc --compare   # both, same data, ratios

Exit status: 0 when every scenario ran without errors, 1 otherwise (a wrong answer counts).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from bench.suite import report
from bench.suite.dataset import SCALES, generate
from bench.suite.scenarios import SCENARIOS, Options, Result, run_all
from bench.suite.targets import (
    MoveDestination,
    Target,
    free_port,
    scratch,
    start_orthanc,
    start_pacs,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description="DICOM / DICOMweb benchmark scenarios.")
    parser.add_argument("--target", action="append", default=[], type=Target.parse,
                        metavar="NAME=AET@HOST:PORT[,web=URL]", help="an archive to measure")
    parser.add_argument("--with-pacs", action="store_true",
                        help="start a private `pacs serve` of this repository as a target")
    parser.add_argument("--with-orthanc", action="store_true",
                        help="start a private Orthanc (Debian's orthanc) as a target")
    parser.add_argument("--compare", action="store_true",
                        help="print ratios between the first two targets")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--studies", type=int, default=8, help="studies stored over DIMSE")
    parser.add_argument("--scale", choices=SCALES, default="small", help="image sizes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--associations", type=int, default=4,
                        help="parallel associations / HTTP clients")
    parser.add_argument("--repeat", type=int, default=20, help="requests per query shape")
    parser.add_argument("--calling-aet", default="BENCH")
    parser.add_argument("--move-dest", default=None, metavar="AET:PORT",
                        help="C-MOVE destination the targets know (the suite listens there)")
    parser.add_argument("--pacs-workers", type=int, default=0,
                        help="workers of the --with-pacs archive (0: one per core)")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--plots", type=Path, default=None,
                        help="write throughput.png and latency.png into this folder")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep generated data and servers' files here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    selected = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    unknown = set(selected) - set(SCENARIOS)
    if unknown:
        print(f"unknown scenario {sorted(unknown)[0]!r}", file=sys.stderr)
        return 2
    if args.move_dest:
        dest_aet, _, dest_port_text = args.move_dest.partition(":")
        dest_port = int(dest_port_text)
    else:
        dest_aet, dest_port = "BENCHDST", free_port()
    with ExitStack() as stack:
        work = scratch(stack, args.work)
        dest = stack.enter_context(MoveDestination(work, dest_aet, dest_port))
        targets: list[Target] = list(args.target)
        if args.with_pacs:
            targets.append(start_pacs(stack, work / "pacs", dest_aet, dest_port,
                                      args.pacs_workers))
        if args.with_orthanc:
            targets.append(start_orthanc(stack, work / "orthanc", args.calling_aet, dest_aet,
                                         dest_port))
        if not targets:
            print("no target: give --target, --with-pacs or --with-orthanc", file=sys.stderr)
            return 2
        if args.compare and len(targets) < 2:
            print("--compare needs two targets", file=sys.stderr)
            return 2
        started = time.perf_counter()
        data = generate(work / "data", args.studies, args.scale, args.seed)
        print(f"generated {len(data.dimse_files)} + {len(data.stow_files)} instances "
              f"({data.bytes_of(data.dimse_files + data.stow_files) / 1e6:.1f} MB, "
              f"scale {args.scale}, seed {args.seed}) in {time.perf_counter() - started:.1f} s",
              flush=True)
        options = Options(args.calling_aet, args.associations, args.repeat)
        results: list[Result] = []
        # Only a destination the targets were told about: a random port is for private ones.
        move_dest = dest if (args.move_dest or args.with_pacs or args.with_orthanc) else None
        for target in targets:
            results += run_all(target, options, data, work, move_dest, selected,
                               lambda line: print(f"  {line}", flush=True))
    print()
    print(report.table(results))
    compare = None
    if args.compare:
        compare = report.ratios(results, targets[0].name, targets[1].name)
        print()
        print(report.ratio_table(compare, targets[0].name, targets[1].name))
    if args.json:
        report.write_json(args.json, results, {
            "targets": [t.__dict__ for t in targets], "studies": args.studies,
            "scale": args.scale, "seed": args.seed, "associations": args.associations,
            "instances": len(data.dimse_files), "stow_instances": len(data.stow_files),
        }, compare)
        print(f"results: {args.json}")
    if args.plots:
        for path in report.plots(args.plots, results):
            print(f"plot: {path}")
    return 1 if any(r.errors for r in results) else 0
