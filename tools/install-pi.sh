#!/usr/bin/env bash
# Install MaLPi as a systemd service on a Raspberry Pi (Raspberry Pi OS bookworm or newer).
# Run from a checkout of the repository:  sudo tools/install-pi.sh
# Re-running upgrades the code and the unit; /etc/malpi/malpi.toml is written by malpi setup.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
prefix=/opt/malpi
conf=/etc/malpi/malpi.toml

if [ "$(id -u)" -ne 0 ]; then
  echo "install-pi.sh: run as root (sudo $0)" >&2
  exit 1
fi
# pip's constraints for this OS release (docs/platforms.md): the venv sees the OS's modules
# built against its numpy, so pip must install a numpy they run with.
# shellcheck source=/dev/null
release=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
constraints=$repo/tools/constraints/$release.txt
if [ "$(dpkg --print-architecture)" != arm64 ] || [ -z "$release" ] || [ ! -f "$constraints" ]; then
  echo "install-pi.sh: $(dpkg --print-architecture) ${release:-unknown release} is not supported;" \
    "MaLPi needs 64-bit Raspberry Pi OS bookworm or trixie (docs/platforms.md)" >&2
  exit 1
fi

# picamera2 and lgpio come from Raspberry Pi OS, not PyPI (libcamera's bindings are apt-only).
apt-get update
apt-get install -y python3-venv python3-picamera2 python3-lgpio

# A system user that may use the GPIO chips and the camera, and nothing else.
id -u malpi >/dev/null 2>&1 || useradd --system --home-dir /var/lib/malpi --shell /usr/sbin/nologin malpi
for group in gpio video; do
  getent group "$group" >/dev/null && usermod -a -G "$group" malpi
done

# The robot install: LiteRT, gpiozero, pyzmq, OpenCV, and the browser console's aiohttp.
# No TensorFlow.
python3 -m venv --system-site-packages "$prefix/venv"
"$prefix/venv/bin/pip" install --upgrade pip
"$prefix/venv/bin/pip" install -c "$constraints" "${repo}[robot,web]"

install -d -m 0755 /etc/malpi
# The link's CURVE key pair (docs/protocol.md, Security); only authorised clients get in.
if [ ! -f /etc/malpi/keys/server.key_secret ]; then
  "$prefix/venv/bin/malpi" keys init --server --dir /etc/malpi/keys
fi
install -d -m 0700 -o malpi -g malpi /etc/malpi/keys /etc/malpi/keys/authorized
chown malpi:malpi /etc/malpi/keys/server.key /etc/malpi/keys/server.key_secret
echo "authorise an operator: sudo $prefix/venv/bin/malpi keys authorize THEIR_client.key --name NAME --dir /etc/malpi/keys/authorized"
echo "and give them /etc/malpi/keys/server.key (malpi keys trust $(hostname) server.key on their machine)"
install -m 0644 "$repo/systemd/malpi.service" /etc/systemd/system/malpi.service
systemd-analyze verify /etc/systemd/system/malpi.service

# The browser console (docs/web.md): a user of its own with a CURVE client key that the
# daemon's link authorises, and the password that lets people in, both in /etc/malpi/web.
id -u malpi-web >/dev/null 2>&1 || useradd --system --home-dir /var/lib/malpi-web --shell /usr/sbin/nologin malpi-web
install -d -m 0700 -o malpi-web -g malpi-web /etc/malpi/web
if [ ! -f /etc/malpi/web/client.key_secret ]; then
  "$prefix/venv/bin/malpi" keys init --name client --dir /etc/malpi/web
fi
install -m 0644 /etc/malpi/keys/server.key /etc/malpi/web/server.key
chown malpi-web:malpi-web /etc/malpi/web/client.key /etc/malpi/web/client.key_secret
"$prefix/venv/bin/malpi" keys authorize /etc/malpi/web/client.key --name web --dir /etc/malpi/keys/authorized
chown -R malpi:malpi /etc/malpi/keys/authorized
install -m 0644 "$repo/systemd/malpi-web.service" /etc/systemd/system/malpi-web.service
systemd-analyze verify /etc/systemd/system/malpi-web.service
systemctl daemon-reload
set_password="sudo -u malpi-web $prefix/venv/bin/malpi web --set-password --config $conf"
# No configuration is guessed: pins and camera come from malpi setup, run at the car.
if [ ! -f "$conf" ]; then
  echo
  echo "Installed. Next, at the car (wheels off the ground):"
  echo "  sudo $prefix/venv/bin/malpi setup --service     # motors, calibration, camera -> $conf"
  echo "  sudo systemctl enable --now malpi"
  echo "  $set_password          # the browser console's password"
  echo "  sudo systemctl enable --now malpi-web   # https://$(hostname).local:8080/"
  exit 0
fi
# Validate before (re)starting: a bad config must not reach the motors.
"$prefix/venv/bin/malpi" config show --config "$conf" > /dev/null
systemctl enable malpi.service
systemctl restart malpi.service
systemctl --no-pager status malpi.service || true
echo "MaLPi is running; it boots paused: the car moves only when an operator chooses a mode."
if [ -f /etc/malpi/web/password ]; then
  systemctl enable malpi-web.service
  systemctl restart malpi-web.service
  echo "The browser console: https://$(hostname).local:8080/ (web.listen and web.tls in $conf)"
else
  echo "For the browser console, choose its password, then start it:"
  echo "  $set_password"
  echo "  sudo systemctl enable --now malpi-web"
fi
