"""The hardware backends import on any machine, and pull in neither picamera2 nor TensorFlow."""

import subprocess
import sys


def test_backends_import_without_picamera2_or_tensorflow():
    code = (
        "import sys\n"
        "import malpi.camera.capture, malpi.camera.opencv, malpi.camera.picamera\n"
        "import malpi.drivetrain.gpio, malpi.drivetrain.servo\n"
        "print(sorted(m for m in ('picamera2', 'libcamera', 'tensorflow', 'keras') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
