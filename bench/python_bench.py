"""The Python side of chainlink's benchmarks, driven by `chainlink-bench` over a pipe.

    python bench/python_bench.py --workdir DIR --image IMAGE

Builds its chains once, then answers one command per line on stdin with one JSON line on
stdout, so that the harness can interleave Python rounds with the Rust and floor ones and no
round pays for interpreter start, import or chain construction:

    seq N          one run() of a chain of N stages `true`
    gather N M     N run_async() of a chain of M stages `true` under asyncio.gather
    quit

Answers: {"seconds": wall time of the runs alone, "cpu": CPU seconds this process spent in
them (user + system, all threads)} or {"error": "..."}.
"""

import argparse
import asyncio
import json
import resource
import sys
import time

from chainlink import Chainlink


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--image", required=True)
    args = parser.parse_args()

    chains = {}

    def chain(stages: int) -> Chainlink:
        if stages not in chains:
            stage = {"image": args.image, "entrypoint": ["true"]}
            chains[stages] = Chainlink([dict(stage) for _ in range(stages)], workdir=args.workdir)
        return chains[stages]

    def check(results) -> None:
        failed = [r for r in results if not r["success"]]
        if failed:
            raise RuntimeError(f"{len(failed)} stage(s) failed: {failed[0]['data']}")

    async def gather(n: int, stages: int) -> float:
        c = chain(stages)
        started = time.perf_counter()
        runs = await asyncio.gather(*(c.run_async() for _ in range(n)))
        seconds = time.perf_counter() - started
        for results in runs:
            check(results)
        return seconds

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        cpu_before = cpu()
        try:
            if words[0] == "quit":
                break
            if words[0] == "seq":
                c = chain(int(words[1]))
                started = time.perf_counter()
                results = c.run()
                seconds = time.perf_counter() - started
                check(results)
            elif words[0] == "gather":
                seconds = asyncio.run(gather(int(words[1]), int(words[2])))
            else:
                raise ValueError(f"unknown command {words[0]!r}")
            answer = {"seconds": seconds, "cpu": cpu() - cpu_before}
        except Exception as e:  # reported to the harness, which stops
            answer = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
