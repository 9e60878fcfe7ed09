"""How long the way in takes: `kcnn --help`, `kcnn list`, `import kcnn`, a first build, each in a fresh process.

    python bench/startup.py                      # median of 5 runs per command, warm then cold page cache
    python bench/startup.py --root /tmp/before   # the same commands against another checkout (the code before)
    python bench/startup.py --runs 3 --only cli  # the command line alone
    python bench/startup.py --match 'list,import kcnn (torch)' --cache warm

Each command runs as its own process (`python -m kcnn ...` is what the `kcnn` script runs), with PYTHONPATH set to
--root and the working directory there. Cold: the page cache is dropped before every run (`sync; echo 3 >
/proc/sys/vm/drop_caches`, root only; the table says so where it could not). A command that fails prints its exit
code instead of times (e.g. `--version` before it existed). Results and their command go to ../BENCHMARKS.md.
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

SUBCOMMANDS = ("list", "info", "summary", "train", "finetune", "evaluate", "predict", "explain", "export", "serve",
               "doctor")
CLI = [("kcnn --help", ["-m", "kcnn", "--help"]),
       ("kcnn --version", ["-m", "kcnn", "--version"]),
       ("kcnn list", ["-m", "kcnn", "list"]),
       ("kcnn list --pretrained", ["-m", "kcnn", "list", "--pretrained"]),
       ("kcnn info resnet50", ["-m", "kcnn", "info", "resnet50"])]
CLI += [(f"kcnn {name} --help", ["-m", "kcnn", name, "--help"]) for name in SUBCOMMANDS]
BACKENDS = ("tensorflow", "torch", "jax")
IMPORTS = [(f"import keras ({backend})", ["-c", "import keras"], backend) for backend in BACKENDS]
IMPORTS += [(f"import kcnn ({backend})", ["-c", "import kcnn"], backend) for backend in BACKENDS]
# kcnn's own cost beside Keras' (the target: at most 0.3 s more than `import keras`)
IMPORTS += [(f"import kcnn, keras ({backend})", ["-c", "import kcnn, keras"], backend) for backend in BACKENDS]
IMPORTS += [(f"import kcnn; kcnn.build('resnet50') ({backend})", ["-c", "import kcnn; kcnn.build('resnet50')"],
             backend) for backend in BACKENDS]


def cpu_flags():
    """The instruction sets that matter for CPU inference, from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
    return ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in wanted)


def drop_caches():
    """True when the page cache was dropped (root on Linux)."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def time_command(python, root, arguments, backend, runs, cold):
    """(median seconds, min, max, exit code, whether every cold run had its cache dropped)."""
    env = {key: value for key, value in os.environ.items() if key not in ("KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL")}
    env["PYTHONPATH"] = root
    if backend:
        env["KERAS_BACKEND"] = backend
    times, dropped = [], True
    for _ in range(runs):
        if cold:
            dropped = drop_caches() and dropped
        start = time.perf_counter()
        code = subprocess.run([python, *arguments], cwd=root, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode
        times.append(time.perf_counter() - start)
        if code != 0:
            return None, None, None, code, dropped
    return statistics.median(times), min(times), max(times), 0, dropped


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        help="the checkout to time (default: this one)")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--runs", type=int, default=5, help="runs per command (default 5)")
    parser.add_argument("--only", choices=("cli", "imports"), help="time only the command line or the imports")
    parser.add_argument("--cache", choices=("warm", "cold", "both"), default="both")
    parser.add_argument("--match", help="time only the commands whose label contains one of these comma-separated "
                        "texts (e.g. 'list,info,import kcnn')")
    args = parser.parse_args()

    commands = [(label, arguments, None) for label, arguments in CLI] if args.only != "imports" else []
    commands += IMPORTS if args.only != "cli" else []
    if args.match:
        commands = [c for c in commands if any(text in c[0] for text in args.match.split(","))]
    caches = ("warm", "cold") if args.cache == "both" else (args.cache,)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.root, text=True,
                            capture_output=True).stdout.strip()
    print(f"# {args.root} ({commit}), Python "
          f"{platform.python_version()}, {os.cpu_count()} cores, {args.runs} runs per command")
    print(f"# CPU: {platform.processor() or platform.machine()}; {cpu_flags()}")
    print(f"| command | {' | '.join(f'{cache} median (min-max) s' for cache in caches)} |")
    print(f"|---|{'---|' * len(caches)}")
    cold_refused = False
    for label, arguments, backend in commands:
        cells = []
        for cache in caches:
            if cache == "warm":  # one untimed run fills the cache
                time_command(args.python, args.root, arguments, backend, 1, False)
            median, low, high, code, dropped = time_command(args.python, args.root, arguments, backend, args.runs,
                                                            cache == "cold")
            cold_refused = cold_refused or (cache == "cold" and not dropped)
            cells.append(f"exit {code}" if median is None else f"{median:.2f} ({low:.2f}-{high:.2f})")
        print(f"| `{label}` | {' | '.join(cells)} |", flush=True)
    if cold_refused:
        print("# cold: the page cache could not be dropped (not root?): the cold column is warm too")


if __name__ == "__main__":
    main()
