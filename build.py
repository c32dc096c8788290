#!/usr/bin/env python3
"""webformers project commands: setup, build, serve, test, generate, bench, readme.

    python3 build.py serve      # set up, build dist/site and serve the demo (prints the URL)
    python3 build.py test       # set up, build and run the test suite (what CI runs)
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from buildtools.common import DIST, SITE, Stamps  # noqa: E402

APT_PACKAGES = ["chromium", "chromium-driver", "espeak-ng", "sox"]


def log(msg):
    print(f"[setup] {msg}", flush=True)


def setup_key(*files) -> str:
    """sha256 of the interpreter's path and the files' bytes: a new interpreter or lock file re-installs."""
    h = hashlib.sha256(sys.executable.encode())
    for f in files:
        h.update((ROOT / f).read_bytes())
    return h.hexdigest()


def setup(args=None):
    """Install what the project needs: apt packages (Chromium), Python deps, npm deps."""
    missing = [p for p in APT_PACKAGES if not shutil.which(
        {"chromium-driver": "chromedriver", "espeak-ng": "espeak-ng"}.get(p, p))]
    if missing:
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
        if os.geteuid() == 0:
            log(f"installing Debian packages: {' '.join(missing)}")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
            subprocess.run(cmd + ["-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
        else:
            sys.exit(f"missing Debian packages; run as root: sudo {' '.join(cmd)}")
    stamps = Stamps(DIST / ".stamps", log)

    def pip_install():
        log("installing Python dependencies (pip install -e '.[test]')")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-e", f"{ROOT}[test]"], check=True)

    def npm_ci():
        log("installing npm packages (npm ci)")
        subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                       check=True, cwd=ROOT)

    stamps.step("setup-python", setup_key("pyproject.toml"), [], pip_install)
    stamps.step("setup-npm", setup_key("package.json", "package-lock.json"), [ROOT / "node_modules"], npm_ci)
    log("ok")


def build(args=None):
    from buildtools.site import build as build_site
    build_site(models=not getattr(args, "no_models", False))


def serve(args):
    if not args.no_build:
        setup()
        build(args)
    from buildtools.server import serve as start
    srv = start(SITE, args.port, verbose=args.verbose)
    print(f"webformers demo: {srv.url}/", flush=True)
    try:
        srv.thread.join()
    except KeyboardInterrupt:
        srv.stop()


def test(args):
    setup()
    build(args)
    # the 25 slowest tests close every log; a later --durations in the arguments wins
    cmd = [sys.executable, "-m", "pytest", "--durations=25", *args.pytest_args]
    if args.one_process or any(a == "-m" or a.startswith("-m") and not a.startswith("--") for a in args.pytest_args):
        rc = subprocess.call(cmd, cwd=ROOT)
    else:
        rc = test_split(cmd)
    if rc == 5:
        print("pytest collected no tests", file=sys.stderr)
    sys.exit(rc)


def test_split(cmd) -> int:
    """Run two pytest processes side by side: the tests without a browser and the browser tests marked
    ``beside`` (``-m "not browser or beside"``, niced, output to dist/test-cpu.log, printed at the end), and the
    other browser tests (``-m "browser and not beside"``, output live). A page's single-threaded WASM leaves
    the other core to the second. The exit code is the first failure's, 5 only if neither collected."""
    out = DIST / "test-cpu.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        cpu = subprocess.Popen([*cmd, "-m", "not browser or beside"], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                               preexec_fn=lambda: os.nice(10))
        print(f"[test] the tests without a browser and the 'beside' browser tests run beside these; their output: "
              f"{out}", flush=True)
        try:
            rc_browser = subprocess.call([*cmd, "-m", "browser and not beside"], cwd=ROOT)
            print(f"[test] browser tests done (exit {rc_browser}); waiting for the second process ({out})", flush=True)
            rc_cpu = cpu.wait()
        except BaseException:
            cpu.kill()
            cpu.wait()
            raise
    print(f"[test] ---------------- second process (-m 'not browser or beside', {out}) ----------------", flush=True)
    sys.stdout.write(out.read_text())
    print(f"[test] browser tests: exit {rc_browser}; second process: exit {rc_cpu}", flush=True)
    failed = [rc for rc in (rc_browser, rc_cpu) if rc not in (0, 5)]
    return failed[0] if failed else (5 if rc_browser == rc_cpu == 5 else 0)


def generate(args):
    if not args.no_build:
        setup()
        build(args)
    from buildtools.headless import generate as run
    sys.exit(run(args))


def bench(args):
    from buildtools.bench import _cli as run
    if not args.no_build:
        setup()
        build(args)
    sys.exit(run(args.bench_args))


def readme(args):
    sys.path.insert(0, str(ROOT))
    from buildtools.readme import main as run
    run(from_site=args.from_site)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="build.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("setup", help="install Debian, Python and npm dependencies")
    p.set_defaults(fn=setup)
    p = sub.add_parser("build", help="assemble dist/site (incremental)")
    p.add_argument("--no-models", action="store_true", help="keep the demo models dist/site has (no conversion)")
    p.set_defaults(fn=build)
    p = sub.add_parser("serve", help="set up, build and serve dist/site on 127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-build", action="store_true", help="serve dist/site as it is")
    p.add_argument("--no-models", action="store_true")
    p.add_argument("--verbose", action="store_true", help="log every request")
    p.set_defaults(fn=serve)
    p = sub.add_parser("test", help="set up, build and run pytest (extra args go to pytest)", allow_abbrev=False)
    p.add_argument("--no-models", action="store_true")
    p.add_argument("--one-process", action="store_true",
                   help="one pytest for every test (default: the browser tests and the others run side by side; "
                        "also when the arguments have -m)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER)
    p.set_defaults(fn=test)
    p = sub.add_parser("generate", help="generate text in the real page (headless Chromium), streamed to stdout")
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--dtype", default="q4")
    p.add_argument("--device", default="wasm", choices=["wasm", "webgpu", "auto"])
    p.add_argument("--prompt", default="What is the capital of France?")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                   help="wrap the prompt in the model's chat template (default on)")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--no-models", action="store_true")
    p.set_defaults(fn=generate)
    p = sub.add_parser("bench", help="benchmark webformers vs transformers.js, wllama and onnxruntime (JSON + "
                       "table); its options (--rounds, --quick, --threads, --configs, ...): "
                       "python3 -m buildtools.bench --help")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--no-models", action="store_true")
    p.set_defaults(fn=bench, bench_args=[])
    p = sub.add_parser("readme", help="regenerate the README's measured tables from docs/reports/")
    p.add_argument("--from-site", action="store_true",
                   help="first copy the demo models' quantization reports from dist/site/models")
    p.set_defaults(fn=readme)
    # `test -q --durations=60 ...`: options build.py does not know go to pytest, in their order
    args, extra = ap.parse_known_args(argv)
    if extra:
        if args.cmd == "bench":  # the benchmark's own options (buildtools/bench.py)
            args.bench_args = extra
        elif args.cmd != "test":
            ap.error(f"unrecognized arguments: {' '.join(extra)}")
        else:
            args.pytest_args = extra + args.pytest_args
    args.fn(args)


if __name__ == "__main__":
    main()
