#!/usr/bin/env python3
"""Where each process's CPU went in a system-wide profile: `python3 loadtest/perf_split.py perf.data`.

Record with `perf record -a -g -F 499 -o perf.data -- sleep 12` during a run (BENCHMARKS.md,
"Session 9: the floor under the broadcast median"). Prints, per process, its samples and their
share in the kernel, under `tcp_sendmsg` (a socket write and, on loopback, the receiving
socket's side the kernel runs inline) and in user space. Samples × (1 / frequency) / deliveries
in the window is CPU per delivery. A second argument, `start,end` (seconds of perf's clock, as
`perf report --header-only` prints them), keeps only the samples between: the changes' burst
of a run recorded whole.
"""
import collections
import subprocess
import sys


def main():
    window = ["--time", sys.argv[2]] if len(sys.argv) > 2 else []
    out = subprocess.run(["perf", "script", "-i", sys.argv[1], *window, "-F", "comm,pid,tid,ip,sym,dso"],
                         capture_output=True, text=True, check=True).stdout
    stats = collections.defaultdict(lambda: [0, 0, 0])
    for block in out.split("\n\n"):
        lines = [l for l in block.splitlines() if l.strip()]
        if not lines:
            continue
        head = lines[0].split()
        pid = next((p.split("/")[0] for p in head if "/" in p), "?")
        s = stats[(head[0], pid)]
        s[0] += 1
        frames = [f.split() for f in lines[1:]]
        s[1] += bool(frames) and "kernel.kallsyms" in lines[1]
        s[2] += any(len(f) > 1 and f[1] == "tcp_sendmsg" for f in frames)
    for (comm, pid), (n, k, w) in sorted(stats.items(), key=lambda x: -x[1][0])[:10]:
        print(f"{comm:16} {pid:>7} samples {n:6}  kernel {k / n:4.0%}  "
              f"under tcp_sendmsg {w / n:4.0%}  user {1 - k / n:4.0%}")


if __name__ == "__main__":
    main()
