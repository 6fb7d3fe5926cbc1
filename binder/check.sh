#!/bin/bash
# make binder-check: build the environment the way Binder does, then run the notebooks inside 2 GiB.
#
#   1. a FRESH virtual environment (python3.11 -m venv), then `pip install` of exactly the lines of the pip section
#      of binder/environment.yml (repo2docker's conda step installs python=3.11 and pip, then that section);
#   2. binder/postBuild, run in a copy of the checkout (git's tracked and untracked-not-ignored files), as Binder
#      runs it in its clone; nothing else is installed;
#   3. `aef run` with the demo's settings (RunSettings() defaults) inside a memory cgroup limited to 2 GiB, the
#      memory of a free Binder session, where the machine allows one (cgroup v1 or v2, as root); otherwise it says
#      plainly that the limit is NOT enforced and runs without it.
#
# Prints each notebook's peak resident memory (its kernel's own high-water mark, metrics.json "memory"), the
# cgroup's peak (aef + papermill + one kernel at a time: what one JupyterLab server holds when each kernel is
# shut down before the next notebook) and its OOM kills. Exit status: non-zero if the build or a stage failed, the
# cgroup killed a process, or a notebook peaked above 1,800 MiB.
#
# Usage: binder/check.sh [WORKDIR] [--stages 01,02,...]   (WORKDIR default: a new folder under /tmp)
# Environment: BINDER_CHECK_LIMIT_MIB (default 2048), PYTHON (default python3.11).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=""
stages=()
while [ $# -gt 0 ]; do
    case "$1" in
        --stages) stages=(--stages "$2"); shift 2 ;;
        -*) echo "binder/check.sh: unknown option $1; usage: binder/check.sh [WORKDIR] [--stages 01,02,...]" >&2
            exit 2 ;;
        *) work=$1; shift ;;
    esac
done
work=${work:-$(mktemp -d /tmp/aef-binder-check.XXXXXX)}
if [ -e "$work/venv" ]; then
    echo "binder/check.sh: $work/venv exists; give a new WORKDIR (the environment must be fresh)" >&2
    exit 2
fi
limit_mib=${BINDER_CHECK_LIMIT_MIB:-2048}
python=${PYTHON:-python3.11}
mkdir -p "$work"
say() { echo "[binder-check $(date -u +%H:%M:%S)] $*"; }

say "date: $(date -u '+%Y-%m-%d %H:%M UTC'); CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(getconf _NPROCESSORS_ONLN) cores"
say "workdir: $work"

# ---- 1. fresh venv + the pip section of binder/environment.yml ------------------------------------------------
t0=$SECONDS
"$python" -m venv "$work/venv"
# the "- pip:" list: every "      - item" line after it, up to the next less-indented line
awk '/^  - pip:/ {on=1; next} on && /^      - / {sub(/^      - /, ""); print; next} on {on=0}' \
    "$repo/binder/environment.yml" > "$work/requirements.txt"
# an index this machine cannot reach (e.g. the PyTorch CPU index, offline) would make pip retry it for every
# package: leave it out and say so; the same pins then come from the indexes pip is configured with here
for url in $(sed -n 's/^--extra-index-url *//p' "$work/requirements.txt"); do
    host=${url#*://}; host=${host%%/*}
    if ! getent hosts "$host" > /dev/null; then
        say "index $url is unreachable here ($host does not resolve): left out; pins come from pip's configured indexes"
        grep -vF -- "--extra-index-url $url" "$work/requirements.txt" > "$work/requirements.tmp"
        mv "$work/requirements.tmp" "$work/requirements.txt"
    fi
done
say "installing $(grep -vc '^--' "$work/requirements.txt") pinned packages from binder/environment.yml's pip section"
"$work/venv/bin/python" -m pip install --quiet -r "$work/requirements.txt"

# ---- 2. postBuild in a copy of the checkout ------------------------------------------------------------------
mkdir -p "$work/repo"
(cd "$repo" && git ls-files -co --exclude-standard -z | xargs -0 tar -cf - 2>/dev/null) | tar -xf - -C "$work/repo"
export AEFLIB_CACHE="$work/cache"          # a fresh cache: postBuild converts the embedded model as on Binder
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
(cd "$work/repo" && PATH="$work/venv/bin:$PATH" bash binder/postBuild)
say "environment built in $((SECONDS - t0)) s"

# ---- 3. the notebooks under a memory limit --------------------------------------------------------------------
cg="" kind=""
name="aef-binder-check-$$"
if [ -d /sys/fs/cgroup/memory ] && mkdir "/sys/fs/cgroup/memory/$name" 2>/dev/null; then
    cg="/sys/fs/cgroup/memory/$name" kind=v1
    echo $((limit_mib * 1024 * 1024)) > "$cg/memory.limit_in_bytes"
    [ -f "$cg/memory.memsw.limit_in_bytes" ] && echo $((limit_mib * 1024 * 1024)) > "$cg/memory.memsw.limit_in_bytes"
elif [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers \
        && mkdir "/sys/fs/cgroup/$name" 2>/dev/null; then
    cg="/sys/fs/cgroup/$name" kind=v2
    echo $((limit_mib * 1024 * 1024)) > "$cg/memory.max"
    [ -f "$cg/memory.swap.max" ] && echo 0 > "$cg/memory.swap.max"
fi
if [ -n "$cg" ]; then
    say "memory limit ENFORCED: $limit_mib MiB, cgroup $kind $cg"
else
    say "memory limit NOT ENFORCED: no writable memory cgroup here (needs root and cgroup v1 memory or v2);" \
        "the peaks below are measured, but nothing stops a run that exceeds $limit_mib MiB"
fi
cleanup() { [ -n "$cg" ] && rmdir "$cg" 2>/dev/null || true; }
trap cleanup EXIT

# the converted model was written by postBuild, outside the cgroup: its page cache would stay charged there, and the
# cgroup would not count the weights the kernels map. Evict those clean pages (posix_fadvise, only these files) so
# that the kernels' first reads charge them to this cgroup, as on Binder, where the session's limit covers everything.
"$work/venv/bin/python" - "$AEFLIB_CACHE" <<'EOF'
import os, sys
for root, _, files in os.walk(sys.argv[1]):
    for name in files:
        fd = os.open(os.path.join(root, name), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
EOF

t1=$SECONDS
set +e
(
    [ -n "$cg" ] && echo "$BASHPID" > "$cg/cgroup.procs"
    cd "$work/repo" && exec env PATH="$work/venv/bin:$PATH" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" \
        aef run --name binder-check --runs-root "$work/runs" "${stages[@]}"
)
status=$?
set -e
say "aef run exited with $status after $((SECONDS - t1)) s"

oom=0
if [ "$kind" = v1 ]; then
    say "cgroup peak: $(($(cat "$cg/memory.max_usage_in_bytes") / 1048576)) MiB of $limit_mib MiB"
    oom=$(sed -n 's/^oom_kill //p' "$cg/memory.oom_control"); oom=${oom:-0}
    say "cgroup OOM kills: $oom"
elif [ "$kind" = v2 ]; then
    [ -f "$cg/memory.peak" ] && say "cgroup peak: $(($(cat "$cg/memory.peak") / 1048576)) MiB of $limit_mib MiB"
    oom=$(sed -n 's/^oom_kill //p' "$cg/memory.events"); oom=${oom:-0}
    say "cgroup OOM kills: $oom"
fi

say "per-notebook peaks (each kernel's own high-water mark, metrics.json \"memory\"):"
set +e
"$work/venv/bin/python" - "$work/runs/binder-check/metrics.json" <<'EOF'
import json, sys
from pathlib import Path
path = Path(sys.argv[1])
memory = json.loads(path.read_text()).get("memory", {}) if path.is_file() else {}
over = 0
for stage, m in memory.items():
    peak = m["peak_rss_mib"]
    over += peak > 1800
    print(f"  {stage:28s} {peak:8.0f} MiB{'   OVER 1,800 MiB' if peak > 1800 else ''}")
if not memory:
    print("  (no stage recorded its peak)")
sys.exit(1 if over else 0)
EOF
peaks_ok=$?
[ "$status" -eq 0 ] && [ "$oom" -eq 0 ] && [ "$peaks_ok" -eq 0 ] && say "PASS" && exit 0
say "FAIL (aef run status $status, OOM kills $oom, peaks over 1,800 MiB: $([ "$peaks_ok" -eq 0 ] && echo no || echo yes))"
exit 1
