#!/usr/bin/env python3
"""Medians of a `loadtest/bench.sh` log, per label: `python3 loadtest/summarize.py < log`.

bench.sh prints `round N: <label>` before each run, then loadgen's JSON (one object per load
generator) and a `{"server": ...}` line with the Redis figures. Runs are grouped by label and
each figure is the median over the rounds; with two load generators in a run, latencies are the
worse of the two, counts their sum. Labels "<what>, N changes/s" beside "<what>, 0 changes/s" also
get the marginal replica CPU per change: the difference of the two runs' CPU over the changes.
"""
import re
import json
import statistics
import sys


def runs(lines):
    label, current = None, []
    for line in lines:
        line = line.strip()
        if line.startswith("round "):
            label = line.split(":", 1)[1].strip()
        elif line.startswith('{"server"'):
            yield label, current, json.loads(line)
            current = []
        elif line.startswith("{"):
            current.append(json.loads(line))


def figures(gens, redis):
    lat = [g["latency"] for g in gens if "latency" in g]
    d = [g["deliveries"] for g in gens if "deliveries" in g]
    out = {
        "p50_ms": max(x["p50_ms"] for x in lat),
        "p99_ms": max(x["p99_ms"] for x in lat),
        "missing": sum(x["missing"] for x in d),
        "doubled": sum(x["doubled"] for x in d),
        "received": sum(x["received"] for x in d),
        "frames": sum(g.get("frames", 0) for g in gens),
        "changes": sum(g.get("changes", 0) for g in gens),
        "server_cpu_s": gens[0].get("server_cpu_s"),
        "window_s": gens[0].get("window_s"),
        "redis_cpu_s": redis.get("redis_cpu_s"),
        "redis_commands": redis.get("redis_commands"),
    }
    # Every load generator measured the replicas' CPU over (nearly) the same window: one.
    cpu = gens[0].get("server_cpu_s", 0)
    own = sum(g.get("loadgen_cpu_s", 0) for g in gens)
    # The load generator's own CPU per delivery: it must be far below the servers' for the
    # latency to be theirs (loadtest/README.md, "How fanout reads its viewers").
    out["loadgen_cpu_us_per_update"] = own * 1e6 / out["received"] if out["received"] else None
    out["max_ms"] = max(x.get("max_ms", 0) for x in lat)
    out["server_cpu_us_per_update"] = cpu * 1e6 / out["received"] if out["received"] else None
    out["server_cpu_ms_per_change"] = cpu * 1e3 / out["changes"] if out["changes"] else None
    out["redis_cpu_ms_per_change"] = (
        redis["redis_cpu_s"] * 1e3 / out["changes"] if out["changes"] and redis.get("redis_cpu_s") is not None else None
    )
    # Latency through the run (fanout): p50 of the changes sent in each 5 s, as "p50@s".
    through = gens[0].get("latency_by_5s")
    out["p50_by_5s"] = " ".join("%g@%d" % (w["p50_ms"], w["from_s"]) for w in through) if through else None
    rss = [g["server_rss_kib"] for g in gens if "server_rss_kib" in g]
    if rss:
        out["server_rss_mib"] = rss[0] / 1024
    return out


def main():
    groups = {}
    for label, gens, redis in runs(sys.stdin):
        if gens:
            groups.setdefault(label, []).append(figures(gens, redis))
    for label, rows in groups.items():
        med = {}
        for k in rows[0]:
            if k == "p50_by_5s":
                continue
            vals = [r[k] for r in rows if r[k] is not None]
            med[k] = round(statistics.median(vals), 2) if vals else None
        print(f"{label} ({len(rows)} runs): " + json.dumps(med))
        for r in rows:
            print("   run: p50 %(p50_ms)s p99 %(p99_ms)s max %(max_ms)s missing %(missing)s doubled %(doubled)s"
                  " server %(server_cpu_us_per_update)s µs/update, load generator %(loadgen_cpu_us_per_update)s" % r)
            if r.get("p50_by_5s"):
                print("        p50 ms @ s since the first change: " + r["p50_by_5s"])
    for label, rows in groups.items():
        m = re.match(r"^(.*), (\d+) changes/s$", label)
        idle = groups.get(f"{m.group(1)}, 0 changes/s") if m and m.group(2) != "0" else None
        if not idle:
            continue
        med = lambda rs, k: statistics.median(r[k] for r in rs if r[k] is not None)
        # The idle run's CPU scaled to the run's window (the drains differ by a second or so).
        marginal = lambda r, i: (r["server_cpu_s"] - i["server_cpu_s"] * r["window_s"] / i["window_s"]) * 1e3 / r["changes"]
        each = sorted(round(marginal(r, i), 3) for r, i in zip(rows, idle) if r["changes"] and r.get("window_s") and i.get("window_s"))
        print(f"{m.group(1)}: marginal replica CPU per change, median {statistics.median(each) if each else None} ms, round by round {each}"
              f" (CPU with changes {med(rows, 'server_cpu_s'):.2f} s, without {med(idle, 'server_cpu_s'):.2f} s; {med(rows, 'changes'):.0f} changes)")


if __name__ == "__main__":
    main()
