"""The side-by-side benchmark behind `bash bench/run`: one system after another on the same load, each collector
pinned to core 0 and the load generator to core 1. Writes bench/RESULTS.md and bench/results.png.

Measured per system: the sustained spans/s with nothing refused (as fast as acknowledged, 32 requests in flight),
CPU seconds per million spans, peak resident memory, whether the derived counts match what was sent, memory over a
soak at half the measured rate, and (collectors that derive latency) the error of their p50..p99 against the exact
quantiles of heavy-tailed data. For infercol also: what a scrape of 10,000 series costs while spans flow.

Usage: python3 bench/harness.py --infercol BIN --loadgen BIN [--quick]   (bash bench/run builds both first)
"""

import argparse
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

QUANTILES = ["0.5", "0.9", "0.95", "0.99"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


class System:
    """A collector under test: its command line (given its OTLP and Prometheus ports) and how to read it."""

    def __init__(self, name, describe, command, count_family=None, count_match="", latency=None):
        self.name, self.describe, self.command = name, describe, command
        self.count_family, self.count_match, self.latency = count_family, count_match, latency
        self.proc = None

    def start(self, work):
        self.otlp, self.prom = free_port(), free_port()
        cmd = ["taskset", "-c", "0"] + self.command(work, self.otlp, self.prom)
        self.log = open(os.path.join(work, f"{self.name}.log"), "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log)
        wait_port(self.otlp)
        time.sleep(1)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def metrics_url(self):
        return f"http://127.0.0.1:{self.prom}/metrics"

    def counted(self):
        total = 0.0
        for line in scrape(self.metrics_url()).splitlines():
            if line.startswith(self.count_family + "{") and self.count_match in line:
                total += float(line.rsplit(" ", 1)[1])
        return int(total)


def loadgen(args, port, duration, *extra):
    """Runs the load generator; its JSON line, with `loadgen_cpu`: the generator's own CPU seconds."""
    cmd = ["taskset", "-c", "1", args.loadgen, "--endpoint", f"127.0.0.1:{port}", "--duration", str(duration)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd + [str(e) for e in extra], capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = json.loads(out.strip().splitlines()[-1])
    load["loadgen_cpu"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return load


def throughput(args, system, work, duration=None, batch=1000, concurrency=32, *extra):
    """One load on a fresh start of `system`: as fast as acknowledged unless `extra` holds a `--rate`."""
    system.start(work)
    pid = system.proc.pid
    t0 = cpu_seconds(pid)
    load = loadgen(args, system.otlp, duration or args.duration, "--batch", batch, "--concurrency", concurrency,
                   *extra)
    t1 = cpu_seconds(pid)
    # Past the next flush (1 s), so that the counts include every request.
    time.sleep(1.5 if args.quick else 3)
    acknowledged = load["acknowledged"]
    row = {
        "batch": batch,
        "spans_per_sec": load["spans_per_sec"],
        "refused": load["refused"],
        "cpu_per_million": (t1 - t0) / (acknowledged / 1e6) if acknowledged else float("nan"),
        # CPU per export request: what an SDK's small batches pay for.
        "cpu_us_per_request": (t1 - t0) / (acknowledged / batch) * 1e6 if acknowledged else float("nan"),
        "peak_mib": status_kib(pid, "VmHWM") / 1024,
        "loadgen_busy": load["loadgen_cpu"] / load["seconds"],
    }
    if system.count_family is None:
        row["counts"] = "n/a (reads nothing)"
    elif system.count_family:
        want, got = load["requests"], system.counted()
        row["counts"] = f"yes ({got:,} requests)" if got == want else f"NO: {got:,} counted, {want:,} sent"
    else:
        row["counts"] = "n/a (derives nothing)"
    system.stop()
    return row


# Batch sizes as SDKs send them: the Python SDK's BatchSpanProcessor exports up to 512 spans, and far fewer at low
# rates; 1000 is the main table's.
SWEEP_BATCHES = [10, 50, 512, 1000]
# Many clients: 500 connections (replicas each holding their own), 10-span requests at a modest rate.
MANY_CLIENTS = {"connections": 500, "batch": 10, "rate": 50_000}


def sweep(args, systems):
    """Each system at each batch size (64 requests in flight), then with many clients; rows by system."""
    out = {}
    seconds = 2 if args.quick else 8
    for s in systems:
        out[s.name] = {}
        for batch in SWEEP_BATCHES:
            print(f"sweep: {s.name}, batch {batch}", file=sys.stderr)
            out[s.name][batch] = throughput(args, s, args.work, seconds, batch, 64)
        m = MANY_CLIENTS
        print(f"many clients: {s.name}", file=sys.stderr)
        out[s.name]["many"] = throughput(args, s, args.work, seconds * 2, m["batch"], m["connections"],
                                         "--connections", m["connections"], "--rate", m["rate"])
    return out


def sweep_lines(out):
    """The sweep's tables and its ratios against the targets (CPU per span within 2x of the floor, 3x less than
    the Collector's)."""
    names = list(out)
    lines = ["## Batch sizes", "",
             f"`infercol-loadgen --batch B --concurrency 64`, as fast as acknowledged, each system on a fresh start. "
             "CPU per span and per request is the collector's own CPU time over what it acknowledged.", "",
             "| batch | " + " | ".join(f"{n} spans/s | {n} CPU s/M spans | {n} CPU us/request | {n} peak RSS"
                                       for n in names) + " |",
             "|---|" + "---|---|---|---|" * len(names)]
    for b in SWEEP_BATCHES:
        cells = []
        for n in names:
            x = out[n][b]
            refused = f" ({x['refused']:,} refused)" if x["refused"] else ""
            cells.append(f"{x['spans_per_sec']:,.0f}{refused} | {x['cpu_per_million']:.2f} | "
                         f"{x['cpu_us_per_request']:.1f} | {x['peak_mib']:.0f} MiB")
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    lines += ["", "| batch | infercol CPU per span / floor's (target at most 2x) | Collector's / infercol's (target "
              "at least 3x) | rotel's / infercol's | counts |", "|---|---|---|---|---|"]
    for b in SWEEP_BATCHES:
        i, f, o, r = (out[n][b]["cpu_per_million"] for n in ["infercol", "floor", "otelcol", "rotel"])
        lines.append(f"| {b} | {i / f:.2f}x ({'met' if i <= 2 * f else 'not met'}) | {o / i:.2f}x "
                     f"({'met' if o >= 3 * i else 'not met'}) | {r / i:.2f}x | infercol {out['infercol'][b]['counts']}"
                     f", otelcol {out['otelcol'][b]['counts']} |")
    m = MANY_CLIENTS
    lines += ["", "## Many clients", "",
              f"`--connections {m['connections']} --concurrency {m['connections']} --batch {m['batch']} --rate "
              f"{m['rate']}`: each connection one request in flight, {m['batch']}-span requests, "
              f"{m['rate']:,} spans/s in all.", "",
              "| system | spans/s | refused | CPU s per million spans | CPU us per request | peak RSS | counts |",
              "|---|---|---|---|---|---|---|"]
    for n in names:
        x = out[n]["many"]
        lines.append(f"| {n} | {x['spans_per_sec']:,.0f} | {x['refused']:,} | {x['cpu_per_million']:.2f} | "
                     f"{x['cpu_us_per_request']:.1f} | {x['peak_mib']:.0f} MiB | {x['counts']} |")
    return lines


def soak(args, system, work, rate, seconds):
    """Half the measured rate for `seconds`; resident memory sampled every 2 s."""
    system.start(work)
    pid = system.proc.pid
    samples = []
    proc = subprocess.Popen(
        ["taskset", "-c", "1", args.loadgen, "--endpoint", f"127.0.0.1:{system.otlp}", "--duration", str(seconds),
         "--rate", str(int(rate)), "--batch", "1000", "--concurrency", "8"],
        stdout=subprocess.PIPE, text=True)
    start = time.time()
    while proc.poll() is None:
        samples.append((time.time() - start, status_kib(pid, "VmRSS") / 1024))
        time.sleep(2)
    load = json.loads(proc.stdout.read().strip().splitlines()[-1])
    system.stop()
    # Flat means: from the end of the first quarter (warm-up: buffers, series, windows filling) to the end. One
    # sample of RSS moves by a few MiB as the allocator takes and returns pages, so each end is the median of a
    # window (a minute in a full run, an eighth of the soak in shorter ones), and the least-squares slope over the
    # whole settled part tells a trend from that noise.
    settled = [(t, m) for t, m in samples if t >= seconds / 4]
    window = max(min(60.0, seconds / 8), 4.0)
    t0, t1 = settled[0][0], settled[-1][0]
    first = statistics.median(m for t, m in settled if t < t0 + window)
    last = statistics.median(m for t, m in settled if t > t1 - window)
    ts, ms = [t for t, _ in settled], [m for _, m in settled]
    slope = statistics.linear_regression(ts, ms).slope if len(settled) > 1 else 0.0
    return {
        "rate": load["spans_per_sec"], "refused": load["refused"], "seconds": seconds, "window": window,
        "rss_settled": first, "rss_end": last, "rss_max": max(ms),
        "growth": (last - first) / first * 100, "trend_per_10min": slope * 600, "series": samples,
    }


def histogram_quantile(q, buckets):
    """Prometheus' histogram_quantile over cumulative (le, count) pairs: linear inside the bucket."""
    buckets = sorted(buckets)
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-12)
        prev_le, prev_count = le, count
    return buckets[-1][0]


def buckets_of(text, family, scale, match=""):
    sums = {}
    for line in text.splitlines():
        if line.startswith(family + "_bucket{") and match in line:
            le = re.search(r'le="([^"]+)"', line).group(1)
            le = float("inf") if le == "+Inf" else float(le) * scale
            sums[le] = sums.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    return list(sums.items())


def quantile_error(args, system, work):
    """Heavy-tailed request durations, sent once; each system's p50..p99 against the exact quantiles."""
    system.start(work)
    load = loadgen(args, system.otlp, 60, "--once", "--heavy-tail", "--variants", 40, "--batch", 1000,
                   "--concurrency", 4)
    exact = load["duration_quantiles"]
    time.sleep(3)
    text = scrape(system.metrics_url())
    system.stop()
    out = {}
    for label, how in system.latency(text).items():
        out[label] = {q: (how(q) - exact[q]) / exact[q] * 100 for q in QUANTILES}
    return exact, out


def scrape_cost(args, system, work, rate, seconds, models):
    """Spans over many models; scrapes once a second while the load runs at `rate`."""
    system.start(work)
    # Fill the series first: every model at least once.
    loadgen(args, system.otlp, 60, "--once", "--models", models, "--variants", models // 4 + 1,
            "--batch", 1000, "--concurrency", 4)
    time.sleep(2.5)
    proc = subprocess.Popen(
        ["taskset", "-c", "1", args.loadgen, "--endpoint", f"127.0.0.1:{system.otlp}", "--duration", str(seconds),
         "--rate", str(int(rate)), "--batch", "1000", "--concurrency", "8", "--models", str(models),
         "--variants", str(models // 4 + 1)],
        stdout=subprocess.PIPE, text=True)
    timings, sizes, series = [], [], 0
    time.sleep(1)
    while proc.poll() is None:
        t = time.perf_counter()
        text = scrape(system.metrics_url())
        timings.append((time.perf_counter() - t) * 1000)
        sizes.append(len(text))
        series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        time.sleep(1)
    load = json.loads(proc.stdout.read().strip().splitlines()[-1])
    peak = status_kib(system.proc.pid, "VmHWM") / 1024
    system.stop()
    return {
        "peak_mib": peak, "models": models, "series": series, "bytes": statistics.median(sizes), "scrapes": len(timings),
        "median_ms": statistics.median(timings), "max_ms": max(timings), "rate": load["spans_per_sec"],
        "target": rate, "refused": load["refused"],
    }


def plot(path, systems, rows, soaks):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    names = [s.name for s in systems]
    a.bar(names, [rows[n]["spans_per_sec"] / 1e6 for n in names], color=["#2b8a3e", "#1c7ed6", "#868e96"])
    a.set_ylabel("million spans/s on one core")
    a.set_title("Sustained ingest, nothing refused")
    for n in names:
        series = soaks[n]["series"]
        b.plot([t / 60 for t, _ in series], [m for _, m in series], label=n)
    b.set_xlabel("minutes at half the measured rate")
    b.set_ylabel("resident memory (MiB)")
    b.set_title("Soak")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def prepare_peers(quick, work):
    """Starts, in the background: the Collector's build from the Go module proxy, rotel and matplotlib from PyPI
    (when missing), and (full runs) the sampling-cost measurement."""
    log = open(os.path.join(work, "peers.log"), "w")
    jobs = {
        "otelcol": subprocess.Popen(["nice", "-n", "19", "bash", "bench/build-otelcol"], stdout=subprocess.PIPE,
                                    stderr=log, text=True),
        "pip": subprocess.Popen(
            ["nice", "-n", "19", "bash", "-c",
             "pip() { python3 -m pip install --quiet --disable-pip-version-check \"$@\"; }; "
             "python3 -c 'import rotel' 2>/dev/null || pip rotel; "
             "python3 -c 'import matplotlib' 2>/dev/null || pip matplotlib || echo 'no matplotlib: no plot'"],
            stdout=log, stderr=log),
    }
    if not quick:
        jobs["sampling"] = subprocess.Popen(["bash", "bench/sampling-cost"], stdout=subprocess.PIPE, stderr=log,
                                            text=True)
    return jobs


def finish_peers(args, jobs):
    out, _ = jobs["otelcol"].communicate()
    if jobs["otelcol"].returncode != 0:
        sys.exit("bench: the OpenTelemetry Collector could not be built (bench/build-otelcol)")
    args.otelcol = out.strip().splitlines()[-1]
    args.otelcol_version = "v" + os.path.basename(os.path.dirname(args.otelcol)).replace("otelcol-", "")
    jobs["pip"].wait()
    import importlib
    import importlib.util
    if importlib.util.find_spec("rotel") is None:
        sys.exit("bench: rotel could not be installed from PyPI")
    importlib.invalidate_caches()
    rotel = importlib.import_module("rotel")
    args.rotel = os.path.join(os.path.dirname(rotel.__file__), "rotel-agent")
    try:
        args.rotel_version = importlib.import_module("rotel.__about__").__version__
    except Exception:  # noqa: BLE001 (a version string is only shown)
        args.rotel_version = "?"
    args.sampling = ""
    if "sampling" in jobs:
        out, _ = jobs["sampling"].communicate()
        args.sampling = out.strip().split("= ")[-1] if out.strip() else ""


def main():
    p = argparse.ArgumentParser()
    for name in ["infercol", "loadgen", "sink"]:
        p.add_argument("--" + name.replace("_", "-"), default="")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    args.duration = 5 if args.quick else 20
    # 7 minutes: long enough for a trend, short enough that a fresh machine (builds included) runs it all in
    # under 25 minutes.
    soak_infercol = 12 if args.quick else 420
    soak_peer = 8 if args.quick else 60
    work = tempfile.mkdtemp()
    started = time.time()

    def infercol_cmd(work, otlp, prom):
        path = os.path.join(work, "infercol.yaml")
        with open(path, "w") as f:
            f.write(f"""receivers: {{ otlp: {{ protocols: {{ grpc: {{ endpoint: "127.0.0.1:{otlp}" }} }} }} }}
connectors: {{ model_metrics: {{ flush_interval: 1s }} }}
exporters: {{ prometheus: {{ endpoint: "127.0.0.1:{prom}" }} }}
service:
  telemetry: {{ metrics: {{ level: none }} }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [model_metrics] }}
    metrics: {{ receivers: [model_metrics], exporters: [prometheus] }}
""")
        return [args.infercol, "--config", path]

    def otelcol_cmd(work, otlp, prom):
        path = os.path.join(work, "otelcol.yaml")
        with open(path, "w") as f:
            f.write(f"""receivers: {{ otlp: {{ protocols: {{ grpc: {{ endpoint: "127.0.0.1:{otlp}" }} }} }} }}
connectors: {{ spanmetrics: {{ metrics_flush_interval: 1s }} }}
exporters: {{ prometheus: {{ endpoint: "127.0.0.1:{prom}" }} }}
service:
  telemetry: {{ metrics: {{ level: none }} }}
  pipelines:
    traces: {{ receivers: [otlp], exporters: [spanmetrics] }}
    metrics: {{ receivers: [spanmetrics], exporters: [prometheus] }}
""")
        return [args.otelcol, "--config", path]

    def rotel_cmd(work, otlp, prom):
        return [args.rotel, "start", "--otlp-grpc-endpoint", f"127.0.0.1:{otlp}", "--exporter", "blackhole"]

    def infercol_latency(text):
        window = {}
        for line in text.splitlines():
            m = re.match(r'model_request_duration_seconds_window\{.*quantile="([^"]+)".*\} (\S+)', line)
            if m:
                window[m.group(1)] = float(m.group(2))
        buckets = buckets_of(text, "model_request_duration_seconds", 1.0)
        return {
            "infercol window quantiles (model_request_duration_seconds_window)": lambda q: window[q],
            "infercol buckets through histogram_quantile": lambda q: histogram_quantile(float(q), buckets),
        }

    def otelcol_latency(text):
        buckets = buckets_of(text, "traces_span_metrics_duration_milliseconds", 1e-3, "SPAN_KIND_SERVER")
        return {"Collector spanmetrics default buckets through histogram_quantile":
                lambda q: histogram_quantile(float(q), buckets)}

    infercol = System("infercol", "otlp -> model_metrics -> prometheus", infercol_cmd,
                      "model_requests_total", "", infercol_latency)
    rows, soaks, errors = {}, {}, {}
    print("throughput: infercol", file=sys.stderr)
    rows["infercol"] = throughput(args, infercol, work)
    # The peers are built and installed during infercol's soak (niced, on the cores the soak leaves idle), so that
    # a fresh machine's run fits its time; the sampling cost (CPU seconds, not wall time) is measured meanwhile.
    jobs = prepare_peers(args.quick, work)
    print(f"soak: infercol, {soak_infercol} s (building the peers meanwhile)", file=sys.stderr)
    soaks["infercol"] = soak(args, infercol, work, rows["infercol"]["spans_per_sec"] / 2, soak_infercol)
    finish_peers(args, jobs)
    systems = [
        infercol,
        System("otelcol", f"OpenTelemetry Collector {args.otelcol_version}: otlp -> spanmetrics -> prometheus",
               otelcol_cmd, "traces_span_metrics_calls_total", "SPAN_KIND_SERVER", otelcol_latency),
        System("rotel", f"rotel {args.rotel_version}: otlp -> blackhole (ingest only, derives nothing)", rotel_cmd,
               ""),
    ]
    for s in systems[1:]:
        print(f"throughput: {s.name}", file=sys.stderr)
        rows[s.name] = throughput(args, s, work)
    # The transport's floor: the same tonic server and codec as infercol's receiver, acknowledging without reading.
    floor = System("floor", "infercol-sink: OTLP/gRPC acknowledged without reading (tonic, as infercol's receiver)",
                   lambda work, otlp, prom: [args.sink, "--endpoint", f"127.0.0.1:{otlp}"], None)
    print("throughput: transport floor", file=sys.stderr)
    rows["floor"] = throughput(args, floor, work)
    args.work = work
    swept = sweep(args, systems + [floor])
    for s in systems[1:]:
        print(f"soak: {s.name}, {soak_peer} s", file=sys.stderr)
        soaks[s.name] = soak(args, s, work, rows[s.name]["spans_per_sec"] / 2, soak_peer)
    exact = None
    for s in systems:
        if s.latency:
            print(f"quantile error: {s.name}", file=sys.stderr)
            exact, errors[s.name] = quantile_error(args, s, work)
    scrapes = []
    # About 800 series per model (counters per status code, seven histograms with their buckets, window quantiles):
    # 13 models pass 10,000 series; 200 models show how the cost grows.
    for models in [13, 200]:
        print(f"scrape cost: infercol, {models} models", file=sys.stderr)
        scrapes.append(scrape_cost(args, systems[0], work, rows["infercol"]["spans_per_sec"] / 2,
                                   6 if args.quick else 30, models))
    # A quick run does not overwrite the full run's figures.
    suffix = "-quick" if args.quick else ""
    plotted = plot(os.path.join(os.path.dirname(__file__), f"results{suffix}.png"), systems, rows, soaks)

    r = {n: rows[n]["spans_per_sec"] for n in rows}
    fl = rows["floor"]
    ten = 10 * r["otelcol"]
    floor_ns, infercol_ns = fl["cpu_per_million"] * 1000, rows["infercol"]["cpu_per_million"] * 1000
    floor_line = (
        f"- The transport's floor (`infercol-sink`: the same tonic server, HTTP/2 settings and codec, acknowledging "
        f"without reading): **{r['floor']:,.0f}** spans/s, {floor_ns:.0f} ns of CPU per span, with the load "
        f"generator's core {fl['loadgen_busy'] * 100:.0f}% busy. 10x the Collector would be {ten:,.0f} spans/s on "
        f"one core: at most {1e9 / ten:.0f} ns of CPU per span in all, {floor_ns:.0f} of them the transport's"
        + (", and above what a collector that does nothing at all reaches here" if ten > r["floor"] else "")
        + f". infercol takes {infercol_ns:.0f} ns per span, {infercol_ns - floor_ns:.0f} of them after the "
        "transport (decoding, classifying, recording).")
    cpu = open("/proc/cpuinfo").read()
    model = re.search(r"model name\s*:\s*(.*)", cpu)
    total = int(re.search(r"MemTotal:\s+(\d+)", open("/proc/meminfo").read()).group(1)) / 1048576
    lines = [
        "# Benchmark results", "",
        f"Written by `bash bench/run{' --quick' if args.quick else ''}` on {time.strftime('%Y-%m-%d', time.gmtime())} "
        f"in {(time.time() - started) / 60:.1f} minutes of measuring. Machine: {os.cpu_count()} cores "
        f"({model.group(1) if model else 'unknown CPU'}), {total:.0f} GiB. Each collector pinned to core 0, "
        "`infercol-loadgen` pinned to core 1.", "",
        "## Ratios (same run)", "",
        f"- infercol / OpenTelemetry Collector, sustained spans/s per core: **{r['infercol'] / r['otelcol']:.2f}x** "
        f"(target 10x: {'met' if r['infercol'] >= 10 * r['otelcol'] else 'not met'}).",
        f"- infercol / rotel (which derives nothing): **{r['infercol'] / r['rotel']:.2f}x** (target: above 1x).",
        f"- infercol spans/s on one core: **{r['infercol']:,.0f}** (target 1,000,000).",
        f"- infercol CPU per million spans: {rows['infercol']['cpu_per_million']:.2f} s, "
        f"the Collector's {rows['otelcol']['cpu_per_million']:.2f} s.",
        floor_line, "",
        "## Sustained ingest", "",
        "`infercol-loadgen --duration {} --batch 1000 --concurrency 32`: as fast as acknowledged; each request holds "
        "half SERVER request spans with the contract's attributes and half `predict` children over several "
        "resources. \"Refused\" counts spans answered with an error or rejected by partial success; every row "
        "below refused none, so the rate is the highest sustained rate with nothing refused at this concurrency. "
        "Counts: the derived request counter summed over the Prometheus endpoint, against what was acknowledged."
        .format(args.duration), "",
        "| system | spans/s on one core | refused | CPU s per million spans | peak RSS | counts match | "
        "load generator's core busy |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in systems + [floor]:
        x = rows[s.name]
        lines.append(f"| {s.name} | {x['spans_per_sec']:,.0f} | {x['refused']:,} | {x['cpu_per_million']:.2f} | "
                     f"{x['peak_mib']:.0f} MiB | {x['counts']} | {x['loadgen_busy'] * 100:.0f}% |")
    lines += [""] + sweep_lines(swept)
    lines += ["", "## Soak at half the measured rate", "",
              f"infercol {soak_infercol} s, the peers {soak_peer} s each (a full run's budget holds one long soak). "
              "Resident memory sampled every 2 s, from the end of the first quarter (warm-up) to the end. Each end "
              "is the median of the samples in its first or last window (a minute in a full run), the change is "
              "between those medians, and the trend is the least-squares slope over all settled samples.", "",
              "| system | spans/s | refused | RSS after warm-up | RSS at the end | max | change | trend |",
              "|---|---|---|---|---|---|---|---|"]
    for s in systems:
        x = soaks[s.name]
        lines.append(f"| {s.name} ({x['seconds']} s, {x['window']:g} s windows) | {x['rate']:,.0f} | "
                     f"{x['refused']:,} | {x['rss_settled']:.1f} MiB | {x['rss_end']:.1f} MiB | "
                     f"{x['rss_max']:.1f} MiB | {x['growth']:+.1f}% | {x['trend_per_10min']:+.1f} MiB per 10 min |")
    lines += ["", "## Quantile error on heavy-tailed data", "",
              "40,000 spans sent once (`--once --heavy-tail`): 20,000 request durations, lognormal around 80 ms "
              "with 2% outliers 10-100 times longer, one resource. Error of each answer against the exact quantile.",
              "", "| quantile | exact | " + " | ".join(k for v in errors.values() for k in v) + " |",
              "|---|---|" + "---|" * sum(len(v) for v in errors.values())]
    for q in QUANTILES:
        cells = [f"{v[k][q]:+.1f}%" for v in errors.values() for k in v]
        lines.append(f"| p{float(q) * 100:g} | {exact[q] * 1000:.1f} ms | " + " | ".join(cells) + " |")
    lines += ["", "## Scrape cost", "",
              "infercol's Prometheus endpoint (text format, classic buckets) scraped once a second while spans over "
              "many models flow at half the measured rate; series = sample lines on the page (what Prometheus "
              "stores as series).", "",
              "| models | series | page | scrape median | scrape max | scrapes | ingest meanwhile (target) | refused | "
              "peak RSS |",
              "|---|---|---|---|---|---|---|---|---|"]
    for x in scrapes:
        lines.append(f"| {x['models']} | {x['series']:,} | {x['bytes'] / 1e6:.1f} MB | {x['median_ms']:.1f} ms | "
                     f"{x['max_ms']:.1f} ms | {x['scrapes']} | {x['rate']:,.0f} ({x['target']:,.0f}) spans/s | "
                     f"{x['refused']:,} | {x['peak_mib']:.0f} MiB |")
    lines += ["", "## Systems", ""]
    for s in systems + [floor]:
        lines.append(f"- {s.name}: {s.describe}")
    if args.sampling:
        lines += ["", f"hostmetrics + nvml at default intervals cost {args.sampling} (`bash bench/sampling-cost`)."]
    if plotted:
        lines += ["", f"![throughput and soak](results{suffix}.png)"]
    with open(os.path.join(os.path.dirname(__file__), f"RESULTS{suffix}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
