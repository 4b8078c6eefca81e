#!/usr/bin/env bash
# Check MaLPi's robot install on 64-bit Raspberry Pi OS's base, emulated: Debian arm64 under
# user-mode QEMU, in a chroot. Slow (an hour or more); not part of CI.
#
#   sudo tools/check-arm64.sh bookworm|trixie [PYTEST ARGS...]
#
# 1. builds (once; cached in $MALPI_ARM64_CACHE, default /var/cache/malpi-arm64/RELEASE) an
#    arm64 Debian root with debootstrap, from the Debian mirror this machine's apt uses, with
#    the apt packages Raspberry Pi OS would have: python3, python3-venv, python3-numpy,
#    python3-opencv, and a module built against the OS's numpy (python3-pywt; and
#    python3-simplejpeg / python3-picamera2 where the release has them, Debian does not);
# 2. installs the robot as tools/install-pi.sh does: a --system-site-packages venv and
#    `pip install -c tools/constraints/RELEASE.txt -e '.[robot,dev]'`, then checks that the
#    apt modules still import and work with the venv's numpy, and shows what happens without
#    the constraints (a second venv, unpinned);
# 3. runs the test suite (robot-only: no TensorFlow, no gymnasium), `malpi drive --sim
#    --duration 10 --no-link`, and the shipped default policy through LiteRT (float and int8)
#    on deterministic simulator frames, compared with the same run on this x86 machine
#    (MALPI_HOST_PYTHON, default the checkout's .venv);
# 4. prints a summary and exits non-zero if anything failed.
#
# The code tested is the checkout's HEAD (git archive: no .venv, no uncommitted edits); the
# constraints file is the working tree's. Extra arguments go to pytest (e.g. -m "not tf").
set -euo pipefail

usage() { echo "usage: sudo $0 bookworm|trixie [PYTEST ARGS...]" >&2; exit 2; }
[ $# -ge 1 ] || usage
release=$1
shift
pytest_args=("$@")
case "$release" in
  bookworm | trixie) ;;
  *) usage ;;
esac
if [ "$(id -u)" -ne 0 ]; then
  echo "check-arm64.sh: run as root (debootstrap, chroot and binfmt_misc need it)" >&2
  exit 1
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${MALPI_ARM64_CACHE:-/var/cache/malpi-arm64}
root=$cache/$release
work=$cache/work-$release # logs and the LiteRT comparison's files, kept after the run
constraints=$repo/tools/constraints/$release.txt
host_python=${MALPI_HOST_PYTHON:-$repo/.venv/bin/python}
host_ca=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
# pyproject's 600 s per test is for native runs; emulation is 5-20 times slower.
test_timeout=${MALPI_TEST_TIMEOUT:-1800}
[ -f "$constraints" ] || { echo "no constraints file $constraints" >&2; exit 1; }
[ -x "$host_python" ] || {
  echo "no x86 venv at $host_python for the LiteRT comparison (set MALPI_HOST_PYTHON)" >&2
  exit 1
}
mkdir -p "$cache" "$work"
log() { printf '\n== %s  %s\n' "$(date +%H:%M:%S)" "$*"; }

# --- host tools and the binfmt handler ----------------------------------------------------
if ! command -v debootstrap >/dev/null || ! [ -x /usr/bin/qemu-aarch64-static ] \
  || ! command -v update-binfmts >/dev/null; then
  log "installing qemu-user-static, debootstrap, binfmt-support"
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-user-static debootstrap binfmt-support
fi
# Containers and VMs without systemd have binfmt_misc unmounted and nothing registered: do
# what systemd-binfmt would. The handler's F flag makes the kernel open the interpreter now,
# so it works inside the chroot too (a copy goes into the root all the same, for kernels
# without F).
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if ! grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
  update-binfmts --enable qemu-aarch64
fi
grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || {
  echo "the qemu-aarch64 binfmt handler is not enabled" >&2
  exit 1
}

# --- the mirror: the one this machine's apt uses ----------------------------------------------
# deb822 "URIs:" lines and one-line "deb [opts] URI ..." lines; the first .../debian and
# .../debian-security. No other host is ever named here.
apt_uris() {
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
    2>/dev/null | sed -n -E \
    -e 's/^URIs:[[:space:]]*//p' \
    -e 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' | tr ' ' '\n'
}
mirror=$(apt_uris | grep -m1 -E '/debian/?$' || true)
security=$(apt_uris | grep -m1 -E '/debian-security/?$' || true)
[ -n "$mirror" ] || { echo "no Debian mirror found in /etc/apt/sources.list*" >&2; exit 1; }
mirror=${mirror%/}
security=${security%/}

# --- mounts, released however the script ends -------------------------------------------------
mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount -l "${mounted[$i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT
mount_root() {
  local what
  for what in proc sys dev dev/pts dev/shm; do
    mountpoint -q "$root/$what" && continue
    mkdir -p "$root/$what"
    case "$what" in
      proc)
        mount -t proc proc "$root/proc"
        mounted+=("$root/proc")
        # qemu-user (7.2) passes the host's x86 /proc/cpuinfo through, and LiteRT's cpuinfo
        # library, parsing it as an ARM one, crashes the interpreter (a segfault in
        # Interpreter()); without /sys it gives up and runs without XNNPACK. A Raspberry Pi 4's
        # (Cortex-A72) instead, one entry per CPU this machine has: XNNPACK picks the kernels
        # it would on a Pi 4.
        local i
        : >"$work/cpuinfo"
        for ((i = 0; i < $(nproc); i++)); do
          printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$i"
        done >>"$work/cpuinfo"
        printf 'Revision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n' >>"$work/cpuinfo"
        mount --bind "$work/cpuinfo" "$root/proc/cpuinfo"
        what=proc/cpuinfo
        ;;
      sys) mount -t sysfs sys "$root/sys" ;;
      dev) mount --bind /dev "$root/dev" ;;
      dev/pts) mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts" ;;
      # The daemon's processes share memory through /dev/shm: a private tmpfs.
      dev/shm) mount -t tmpfs -o mode=1777 shm "$root/dev/shm" ;;
    esac
    mounted+=("$root/$what")
  done
  cp /etc/resolv.conf "$root/etc/resolv.conf" # pip reaches PyPI from inside
  # ... trusting what this machine trusts (its bundle holds the CA of a TLS-inspecting proxy,
  # where there is one; the root's own ca-certificates would not).
  cp "$host_ca" "$root/etc/ssl/host-ca-certificates.crt"
}
# A clean environment inside: nothing of the host's pip configuration or venv leaks in.
# The emulated CPU is a Pi 4's Cortex-A72, matching the cpuinfo below (MALPI_QEMU_CPU: another,
# e.g. cortex-a76 for a Pi 5). QEMU's default, "max", has every feature QEMU knows (SVE, i8mm,
# ...), which no Pi has; there XNNPACK picks int8 kernels whose results are wrong (the integer
# model agreed with float on 31 % of frames; on cortex-a72 and cortex-a76 it matches x86 to
# 1e-7), so it does not stand for a Pi.
qemu_cpu=${MALPI_QEMU_CPU:-cortex-a72}
in_root() { in_root_at / "$@"; }
in_root_at() { # DIR COMMAND...: run in DIR inside the root
  local dir=$1
  shift
  chroot "$root" /usr/bin/env -i -C "$dir" HOME=/root LANG=C.UTF-8 TERM=dumb QEMU_CPU="$qemu_cpu" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_CERT=/etc/ssl/host-ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"
}

# --- 1. the arm64 root (cached) ---------------------------------------------------------------
# What Raspberry Pi OS has from apt; the optional ones are Raspberry Pi OS packages that Debian
# may not carry (picamera2 and its simplejpeg); pywt is here as Debian's stand-in for them: a
# Cython extension built against the OS's numpy, which breaks the same way.
apt_pkgs=(python3 python3-venv python3-numpy python3-opencv python3-pywt ca-certificates)
optional_pkgs=(python3-simplejpeg python3-picamera2)
if [ ! -f "$root/.malpi-root-ready" ]; then
  log "building the $release arm64 root in $root from $mirror (slow, once)"
  cleanup
  mounted=()
  rm -rf "$root"
  debootstrap --arch=arm64 --foreign --variant=minbase "$release" "$root" "$mirror"
  install -D -m 0755 /usr/bin/qemu-aarch64-static "$root/usr/bin/qemu-aarch64-static"
  chroot "$root" /debootstrap/debootstrap --second-stage
  {
    echo "deb $mirror $release main"
    echo "deb $mirror $release-updates main"
    [ -z "$security" ] || echo "deb $security $release-security main"
  } >"$root/etc/apt/sources.list"
  mount_root
  in_root apt-get update
  present=()
  for p in "${optional_pkgs[@]}"; do
    if in_root apt-cache show "$p" >/dev/null 2>&1; then present+=("$p"); fi
  done
  in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "${apt_pkgs[@]}" "${present[@]}"
  in_root apt-get clean
  printf '%s\n' "${apt_pkgs[@]}" "${present[@]}" >"$root/.malpi-apt-packages"
  touch "$root/.malpi-root-ready"
else
  log "reusing the $release arm64 root in $root"
fi
mount_root
in_root uname -m | grep -qx aarch64 || { echo "the root does not run as aarch64" >&2; exit 1; }

# --- the checkout and the helper scripts ------------------------------------------------------
src=$root/opt/malpi/src
commit=$(git -C "$repo" rev-parse --short HEAD)
log "copying the checkout (HEAD $commit) into the root"
rm -rf "$root/opt/malpi" "$root/opt/malpi-unpinned"
mkdir -p "$src" "$root/opt/malpi/check"
git -C "$repo" archive --format=tar HEAD | tar -x -C "$src"
cp "$constraints" "$root/opt/malpi/check/constraints.txt"

# Does a module built against the OS's numpy work with the venv's numpy? Each probe imports
# numpy from the venv first, then the apt module, and uses it on an array.
cat >"$root/opt/malpi/check/probe.py" <<'PY'
import importlib.util
import sys

import numpy as np

print(f"numpy {np.__version__} from {np.__file__}")
failed = 0


def probe(name, use):
    global failed
    try:
        print(f"probe {name}: ok ({use()})")
    except Exception as exc:
        failed += 1
        print(f"probe {name}: FAIL {type(exc).__name__}: {str(exc).splitlines()[0]}")


def pywt_use():
    import pywt

    a, d = pywt.dwt(np.arange(8.0), "db1")
    return f"pywt {pywt.__version__} from {pywt.__file__}, dwt {a[:2].round(3).tolist()}"


def apt_cv2_use():
    # The venv's opencv-python-headless shadows apt's cv2; load apt's by path (numpy is
    # already the venv's) to see whether the OS's own build survives this numpy.
    import glob

    dist = "/usr/lib/python3/dist-packages"
    sys.path.insert(0, dist)
    for name in [m for m in sys.modules if m == "cv2" or m.startswith("cv2.")]:
        del sys.modules[name]
    try:
        import cv2
    finally:
        sys.path.remove(dist)
    assert cv2.__file__.startswith(dist), cv2.__file__
    out = cv2.GaussianBlur(np.full((8, 8), 200, np.uint8), (3, 3), 0)
    return f"apt cv2 {cv2.__version__}, blur {int(out[4, 4])}"


def simplejpeg_use():
    import simplejpeg

    jpg = simplejpeg.encode_jpeg(np.full((16, 16, 3), 128, np.uint8))
    return f"simplejpeg {simplejpeg.__version__}, decoded {simplejpeg.decode_jpeg(jpg).shape}"


def picamera2_use():
    import picamera2  # noqa: F401

    return "picamera2 imports"


for name, use in [
    ("pywt", pywt_use),
    ("simplejpeg", simplejpeg_use),
    ("picamera2", picamera2_use),
    ("apt-cv2", apt_cv2_use),
]:
    if name == "apt-cv2" or importlib.util.find_spec(name) is not None:
        probe(name, use)
sys.exit(1 if failed else 0)
PY

# The LiteRT comparison: frames rendered by the simulator along three held-out tracks (fixed
# path, no randomness), fed one at a time to the shipped default policy with a fixed sequence
# of previous actions (seeded), LSTM state carried, reset at each track's start.
cat >"$work/compare.py" <<'PY'
import sys

import numpy as np

from malpi.policy.bundle import PolicyBundle
from malpi.policy.store import shipped_policy

TRACKS, STEPS = (1000, 1001, 1002), 60


def bundle():
    with shipped_policy().open("rb") as f:
        return PolicyBundle.from_bytes(f.read())


def frames(out):
    from malpi.sim.render import CameraSpec
    from malpi.sim.world import World

    spec = bundle().spec
    camera = CameraSpec(width=spec.image_width, height=spec.image_height)
    rng = np.random.default_rng(13)
    obs, prev, start = [], [], []
    for track in TRACKS:
        world = World(track, camera=camera, rng=np.random.default_rng(track))
        half = world.track.half_width
        action = -1
        for i in range(STEPS):
            world.place(i * 0.05, offset=0.5 * half * np.sin(i / 9), heading_error=0.2 * np.sin(i / 7))
            obs.append(world.render().copy())
            prev.append(action)
            start.append(i == 0)
            if rng.random() < 0.3:
                action = int(rng.integers(spec.num_actions))
    np.savez_compressed(out, obs=np.stack(obs), prev=np.array(prev), start=np.array(start))


def run(frames_file, out):
    import ai_edge_litert

    from malpi.policy.runtime import StepPolicy

    data, b, result = np.load(frames_file), bundle(), {}
    for backend in ("litert_float", "litert_dynamic", "litert_int8"):
        policy = StepPolicy(b, backend=backend)
        probs, values = [], []
        for o, p, s in zip(data["obs"], data["prev"], data["start"], strict=True):
            if s:
                policy.reset()
            r = policy.step(o, int(p))
            probs.append(r.probs)
            values.append(r.value)
        result[backend] = np.stack(probs)
        result[backend + "_value"] = np.array(values)
    np.savez(out, **result)
    print(f"ran {len(data['obs'])} frames: numpy {np.__version__}, "
          f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}")


def diff(x86_file, arm_file, frames_x86, frames_arm):
    x, a = np.load(x86_file), np.load(arm_file)
    ok = True
    # Float: the same graph on two CPUs' float kernels; rounding differs, answers must not.
    # Quantised: kernels should agree to a quantisation step; a near-tie may flip.
    limits = {
        "litert_float": (1e-4, 1.0),
        "litert_dynamic": (2e-2, 0.98),
        "litert_int8": (2e-2, 0.98),
    }
    for backend, (max_diff, min_agree) in limits.items():
        d = float(np.abs(x[backend] - a[backend]).max())
        agree = float((x[backend].argmax(1) == a[backend].argmax(1)).mean())
        dv = float(np.abs(x[backend + "_value"] - a[backend + "_value"]).max())
        good = d <= max_diff and agree >= min_agree
        ok &= good
        print(f"{backend}: max|dprob| {d:.2e} argmax agreement {agree:.1%} "
              f"({len(x[backend])} frames) max|dvalue| {dv:.2e} "
              f"{'ok' if good else 'FAIL'} (limits {max_diff:g}, {min_agree:.0%})")
    for name, r in (("x86", x), ("arm64", a)):
        for backend in ("litert_dynamic", "litert_int8"):
            agree = float((r["litert_float"].argmax(1) == r[backend].argmax(1)).mean())
            print(f"{name} {backend} vs float argmax agreement {agree:.1%}")
    fx, fa = np.load(frames_x86)["obs"], np.load(frames_arm)["obs"]
    px = np.abs(fx.astype(np.int16) - fa.astype(np.int16))
    print(f"simulator frames arm64 vs x86: max pixel diff {int(px.max())}, "
          f"{float((px > 0).mean()):.3%} of values differ (informational)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    {"frames": frames, "run": run, "diff": diff}[sys.argv[1]](*sys.argv[2:])
PY
cp "$work/compare.py" "$root/opt/malpi/check/compare.py"

failures=()
venv=/opt/malpi/venv

# --- 2. the robot install, pinned as tools/install-pi.sh pins it -----------------------------
log "robot install: venv --system-site-packages + pip -c constraints/$release.txt"
in_root python3 -m venv --system-site-packages "$venv"
in_root "$venv/bin/pip" install -q --upgrade pip
in_root nice -n 10 "$venv/bin/pip" install -q -c /opt/malpi/check/constraints.txt \
  -e '/opt/malpi/src[robot,dev]'
in_root "$venv/bin/pip" freeze >"$work/pip-freeze.txt"
py_version=$(in_root "$venv/bin/python" -c 'import platform; print(platform.python_version())')
versions=$(in_root "$venv/bin/python" -c '
import numpy, cv2, importlib.metadata as m
litert = m.version("ai-edge-litert")
print(f"numpy {numpy.__version__}, ai-edge-litert {litert}, opencv {cv2.__version__}")')
debian_version=$(cat "$root/etc/debian_version")

log "apt modules with the pinned venv's numpy"
if in_root "$venv/bin/python" /opt/malpi/check/probe.py | tee "$work/probe-pinned.txt"; then
  pinned_probe=ok
else
  pinned_probe=FAIL
  failures+=("apt modules with the pinned numpy")
fi

# Without the constraints (what the README's plain `pip install -e '.[robot]'` does): the pin
# matters if this breaks. Informational: no failure either way.
log "the same without the constraints file (a second venv)"
in_root python3 -m venv --system-site-packages /opt/malpi-unpinned
in_root nice -n 10 /opt/malpi-unpinned/bin/pip install -q -e '/opt/malpi/src[robot]'
unpinned_numpy=$(in_root /opt/malpi-unpinned/bin/python -c 'import numpy; print(numpy.__version__)')
if in_root /opt/malpi-unpinned/bin/python /opt/malpi/check/probe.py | tee "$work/probe-unpinned.txt"; then
  unpinned_probe="ok (the pin is a guard here, not a fix)"
else
  unpinned_probe="FAIL: $(grep -m1 'FAIL' "$work/probe-unpinned.txt" || true)"
fi

# --- 3a. the test suite ---------------------------------------------------------------------
log "pytest (emulated; slow)"
# A test file that does not import on the robot install is an error in the count; the other
# files still run (--continue-on-collection-errors). Unbuffered, so the summary is in the log
# as soon as pytest prints it.
in_root_at /opt/malpi/src env PYTHONUNBUFFERED=1 nice -n 10 "$venv/bin/python" -m pytest -q \
  -p no:cacheprovider --continue-on-collection-errors -o timeout="$test_timeout" \
  "${pytest_args[@]}" >"$work/pytest.log" 2>&1 &
test_pid=$! # chroot, env and nice exec: this is pytest itself
# Emulated, pytest has printed its summary and then hung at exit (a ZeroMQ context that a
# failed test left open, waited on at interpreter shutdown): once the summary is out, it gets
# two minutes, then an interrupt. The counts decide then.
summary_re='^=* ?[0-9]+ (passed|failed|skipped|errors?|deselected).* in [0-9.]+s'
hung=""
while kill -0 "$test_pid" 2>/dev/null; do
  if grep -qE "$summary_re" "$work/pytest.log"; then
    for _ in $(seq 120); do kill -0 "$test_pid" 2>/dev/null && sleep 1; done
    if kill -0 "$test_pid" 2>/dev/null; then
      hung=" (pytest hung at exit after its summary: interrupted)"
      kill -INT "$test_pid"
      for _ in $(seq 60); do kill -0 "$test_pid" 2>/dev/null && sleep 1; done
      kill -KILL "$test_pid" 2>/dev/null || true
    fi
    break
  fi
  sleep 10
done
set +e
wait "$test_pid"
test_rc=$?
set -e
tail -n 30 "$work/pytest.log"
test_counts=$(grep -E "$summary_re" "$work/pytest.log" | tail -n1 | sed -E 's/^=+ //; s/ =+$//')
if [ -z "$test_counts" ]; then
  failures+=("pytest exit $test_rc, no summary")
  test_counts="no summary line (pytest exit $test_rc)"
elif [ -n "$hung" ]; then
  ! grep -qE '[0-9]+ (failed|errors?)' <<<"$test_counts" || failures+=("pytest: $test_counts")
  test_counts+=$hung
else
  [ "$test_rc" -eq 0 ] || failures+=("pytest exit $test_rc")
fi

# --- 3b. the daemon on the simulator ----------------------------------------------------------
log "malpi drive --sim --duration 10 --no-link"
set +e
in_root env MALPI_STATUS_LINE=1 HOME=/tmp/drive-home nice -n 10 "$venv/bin/malpi" drive --sim \
  --duration 10 --no-link >"$work/drive.log" 2>&1
drive_rc=$?
set -e
tr '\r' '\n' <"$work/drive.log" | grep -v '^\s*$' | tail -n 12
drive_status=$(tr '\r' '\n' <"$work/drive.log" | sed 's/\x1b\[K//g' | grep -E '^auto .* Hz ' | tail -n1 || true)
drive_stopped=$(grep -o 'stopped after .*' "$work/drive.log" | tail -n1 || true)
if [ "$drive_rc" -ne 0 ] || ! grep -qE 'stopped after [1-9][0-9]* periods' <<<"$drive_stopped"; then
  failures+=("malpi drive exit $drive_rc")
fi

# --- 3c. LiteRT arm64 vs x86 ------------------------------------------------------------------
log "LiteRT: the default policy on the same frames, x86 (host) and arm64 (emulated)"
litert="not run"
if (cd "$work" && nice -n 10 "$host_python" compare.py frames frames-x86.npz \
  && nice -n 10 "$host_python" compare.py run frames-x86.npz probs-x86.npz); then
  cp "$work/frames-x86.npz" "$root/opt/malpi/check/"
  if in_root_at /opt/malpi/check nice -n 10 "$venv/bin/python" compare.py run frames-x86.npz \
    probs-arm64.npz && in_root_at /opt/malpi/check nice -n 10 "$venv/bin/python" compare.py \
    frames frames-arm64.npz; then
    cp "$root/opt/malpi/check/probs-arm64.npz" "$root/opt/malpi/check/frames-arm64.npz" "$work/"
    set +e
    (cd "$work" && "$host_python" compare.py diff probs-x86.npz probs-arm64.npz \
      frames-x86.npz frames-arm64.npz) | tee "$work/litert.txt"
    litert_rc=${PIPESTATUS[0]}
    set -e
    litert=$(grep -E '^litert_' "$work/litert.txt" | sed 's/^/    /')
    [ "$litert_rc" -eq 0 ] || failures+=("LiteRT arm64 vs x86")
  else
    failures+=("LiteRT run on arm64")
  fi
else
  failures+=("LiteRT run on x86")
fi

# --- 4. summary -------------------------------------------------------------------------------
cat <<EOF | tee "$work/summary.txt"

===== MaLPi on emulated arm64: $release =====
date            $(date -u +%Y-%m-%dT%H:%MZ)
commit          $commit (git archive HEAD), constraints tools/constraints/$release.txt
root            Debian $debian_version arm64 (qemu-user $(/usr/bin/qemu-aarch64-static --version | head -n1 | awk '{print $3}'), CPU $qemu_cpu), apt: $(tr '\n' ' ' <"$root/.malpi-apt-packages")
python          $py_version; $versions
apt modules     pinned venv: $pinned_probe
                unpinned (numpy $unpinned_numpy): $unpinned_probe
tests           $test_counts
drive           ${drive_stopped:-no summary} (exit $drive_rc)
                last status: ${drive_status:-none}
litert vs x86
$litert
$(grep -E '^(x86|arm64) int8|^simulator' "$work/litert.txt" 2>/dev/null | sed 's/^/    /')
logs            $work
EOF
if [ ${#failures[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failures[@]}" | tee -a "$work/summary.txt"
  exit 1
fi
echo "all checks passed" | tee -a "$work/summary.txt"
