#!/usr/bin/env python3
"""Builds the `concord` wheel: the Python package, uniffi's generated module
and the native library, for this platform. Standard library only.

Run by `cargo xtask bindings` after it staged `concord/_native/`:

    python3 bindings/python/build_wheel.py --out target/bindings/python
"""

import argparse
import base64
import hashlib
import os
import re
import sys
import sysconfig
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.join(HERE, "concord")


def version():
    with open(os.path.join(PACKAGE, "__init__.py"), encoding="utf-8") as f:
        match = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M)
    if not match:
        sys.exit("build_wheel: no __version__ in concord/__init__.py")
    return match.group(1)


def platform_tag():
    # The library is built for this machine: tag the wheel with its platform
    # (for example linux_x86_64) so pip refuses it elsewhere.
    return re.sub(r"[-.]", "_", sysconfig.get_platform())


def files():
    native = os.path.join(PACKAGE, "_native")
    for name in ("concord_ffi.py", "__init__.py"):
        if not os.path.exists(os.path.join(native, name)):
            sys.exit(f"build_wheel: {native}/{name} is missing; run `cargo xtask bindings`")
    for directory, dirs, names in os.walk(PACKAGE):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(names):
            if name.endswith((".py", ".so", ".dylib", ".dll")):
                path = os.path.join(directory, name)
                yield path, os.path.relpath(path, HERE).replace(os.sep, "/")


def record_line(arcname, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for the .whl")
    args = parser.parse_args()
    ver = version()
    tag = f"py3-none-{platform_tag()}"
    dist_info = f"concord-{ver}.dist-info"
    os.makedirs(args.out, exist_ok=True)
    wheel_path = os.path.join(args.out, f"concord-{ver}-{tag}.whl")
    metadata = (
        "Metadata-Version: 2.1\n"
        "Name: concord\n"
        f"Version: {ver}\n"
        "Summary: Concord: a local-first database that syncs through a Concord relay\n"
        "License: MIT OR Apache-2.0\n"
        "Requires-Python: >=3.9\n"
        "Provides-Extra: tokens\n"
        "Requires-Dist: cryptography>=41; extra == \"tokens\"\n"
    )
    wheel = (
        "Wheel-Version: 1.0\n"
        "Generator: concord build_wheel.py\n"
        "Root-Is-Purelib: false\n"
        f"Tag: {tag}\n"
    )
    records = []
    with zipfile.ZipFile(wheel_path, "w", zipfile.ZIP_DEFLATED) as whl:
        for path, arcname in files():
            with open(path, "rb") as f:
                data = f.read()
            info = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if arcname.endswith(".so") else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            whl.writestr(info, data)
            records.append(record_line(arcname, data))
        for name, text in (("METADATA", metadata), ("WHEEL", wheel)):
            arcname = f"{dist_info}/{name}"
            whl.writestr(arcname, text)
            records.append(record_line(arcname, text.encode()))
        records.append(f"{dist_info}/RECORD,,")
        whl.writestr(f"{dist_info}/RECORD", "\n".join(records) + "\n")
    print(f"built {wheel_path}")


if __name__ == "__main__":
    main()
